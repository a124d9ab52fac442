"""The working frame of a tomogram: Fourier-cropped or binned to the prompt's working voxel size.

:class:`WorkingTomogram` is a :class:`cryopick.preprocess.WorkingFrame` (the one frame class of 2D and
3D) that also carries the working volume: ``to_working`` maps voxels of the tomogram as stored to
working voxels, ``to_original`` maps back (``x_stored = x_working / factor``, voxel centres).
:func:`check_tomogram` refuses tomograms a network cannot pick in (non-finite or constant voxels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.images import Image, read_tomogram
from cryopick.preprocess import WorkingFrame


# -- tomograms at the working scale ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class WorkingTomogram(WorkingFrame):
    """A tomogram at the working voxel size.

    ``original_shape`` / ``working_shape``: ``(D, H, W)`` of the stored and the working tomogram;
    ``binning`` = working voxel size / stored voxel size; ``voxel_size`` and ``source_voxel_size``
    in Å (``None`` when the header has none).
    """

    volume: np.ndarray = field(default=None, repr=False)
    name: str = ""
    voxel_size: float | None = None
    source_voxel_size: float | None = None
    binning: float = 1.0


def working_tomogram(image: Image | str | os.PathLike, binning: float | None = None,
                     voxel_size: float | None = None, invert: bool = False) -> WorkingTomogram:
    """Bring a tomogram to the working scale: ``voxel_size`` (Å) when both sizes are known, else ``binning``.

    No resampling (the memory map is used as is) when the factor is 1 and ``invert`` is False.
    """
    from cryopick.preprocess import downsample

    image = image if isinstance(image, Image) else read_tomogram(image)
    src = image.pixel_size
    if voxel_size is not None and src is not None:
        factor = voxel_size / src
    else:
        factor = binning or 1.0
    if factor < 0.99:
        if voxel_size is not None and src is not None:
            raise CryopickError(
                f"{image.path}: voxel size {src:g} Å is coarser than the prompt's working voxel size "
                f"{voxel_size:g} Å; make the prompt on a tomogram at this or a finer voxel size")
        raise CryopickError(f"{image.path}: binning {factor:g} would upsample the tomogram; give a binning >= 1")
    if abs(factor - 1.0) < 0.01:
        vol = image.data
        factor = 1.0
    else:
        vol, _ = downsample(np.asarray(image.data, dtype=np.float32), factor)
    if invert:
        vol = -np.asarray(vol, dtype=np.float32)
    work_vs = None if src is None else src * factor
    return WorkingTomogram(tuple(int(s) for s in image.data.shape), tuple(int(s) for s in vol.shape), vol,
                           image.name, work_vs, src, float(factor))


def check_tomogram(image: Image, slab: int = 16) -> None:
    """Raise a :class:`CryopickError` naming the file when ``image`` holds NaN or infinite voxels or
    is constant (an empty or failed reconstruction: nothing could be picked in it).

    Reads the (memory-mapped) volume ``slab`` sections at a time, so memory stays bounded.
    """
    data = image.data
    lo, hi, bad = np.inf, -np.inf, 0
    for z in range(0, data.shape[0], slab):
        block = np.asarray(data[z : z + slab], dtype=np.float32)
        finite = np.isfinite(block)
        if not finite.all():
            bad += int(block.size - finite.sum())
            block = block[finite]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if bad:
        raise CryopickError(f"{image.path}: {bad} of {data.size} voxels are NaN or infinite; "
                            "reconstruct the tomogram again (or fill those voxels) before picking")
    if not hi > lo:
        raise CryopickError(f"{image.path}: every voxel has the same value ({lo:g}); "
                            "an empty or failed reconstruction holds nothing to pick")
