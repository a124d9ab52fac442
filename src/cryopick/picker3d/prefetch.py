"""pick3d's local pipeline: read, check and rescale the next tomogram in a background thread while the
network picks the current one.

Memory stays bounded: besides the tomogram being picked, at most ``ahead`` (default 1) more are read
ahead. A tomogram that cannot be read fails alone: its :class:`CryopickError` is handed to the loop
with it (and the loop lists it), the others go on. Memory-mapped MRC files are not copied: checking
them reads every section once, in the background, so the network then finds them in the page cache.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from cryopick.errors import CryopickError
from cryopick.io.images import Image, read_tomogram
from cryopick.picker3d.prompt import Prompt
from cryopick.picker3d.scale import WorkingTomogram, check_tomogram, working_tomogram

T = TypeVar("T")
V = TypeVar("V")
THREAD_NAME = "cryopick-prefetch"


def prefetched(items: Iterable[T], load: Callable[[T], V], ahead: int = 1) -> Iterator[tuple[T, V | None,
                                                                                             CryopickError | None]]:
    """``(item, load(item), None)`` or ``(item, None, error)`` for each item, in order.

    With ``ahead`` >= 1 one background thread loads up to ``ahead`` items beyond the one the caller
    is working on; ``ahead`` = 0 loads each item in the caller's thread when it is reached. Only a
    :class:`CryopickError` is handed over as ``error``; any other exception propagates. Leaving the
    loop early (an error, Ctrl-C) cancels the loads not started yet.
    """
    if ahead <= 0:
        for item in items:
            yield (item, *_call(load, item))
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
    pending: deque = deque()
    rest = iter(items)
    try:
        _more(rest, pending, pool, load)
        while pending:
            item, future = pending.popleft()
            while len(pending) < ahead and _more(rest, pending, pool, load):
                pass
            value, error = future.result()
            yield item, value, error
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _more(rest: Iterator, pending: deque, pool: ThreadPoolExecutor, load: Callable) -> bool:
    for item in rest:
        pending.append((item, pool.submit(_call, load, item)))
        return True
    return False


def _call(load: Callable[[T], V], item: T) -> tuple[V | None, CryopickError | None]:
    try:
        return load(item), None
    except CryopickError as exc:
        return None, exc


def prepare_tomogram(source: str | os.PathLike | Image, prompt: Prompt,
                     formats: Iterable[str] = ()) -> tuple[Image, WorkingTomogram]:
    """Read and check a tomogram (a path, an :class:`Image`, or a source with ``read()``) and bring it
    to ``prompt``'s working scale and contrast, as :meth:`TomogramPicker.working` would."""
    if isinstance(source, Image):
        image = source
    else:
        image = source.read() if hasattr(source, "read") else read_tomogram(source)
    check_tomogram(image)
    needs_angstrom = [f for f in formats if f in ("relion5", "copick")]
    if needs_angstrom and image.pixel_size is None:
        raise CryopickError(f"{image.path}: no voxel size in the header, which {' and '.join(needs_angstrom)} output "
                            "needs (coordinates in Å); set it in the header (e.g. alterheader) or choose "
                            "--format imod relion4")
    work = working_tomogram(image, binning=prompt.binning, voxel_size=prompt.voxel_size, invert=prompt.invert)
    return image, work
