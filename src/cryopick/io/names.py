"""Micrograph names: match the names in coordinate files to image files robustly.

Picking programs name a micrograph's coordinates after it with a suffix (``mic_autopick.star``), index
files hold paths (``MotionCorr/job002/Movies/mic.mrc``), and tables hold names with or without the image
extension. :func:`match_micrograph_names` maps them all onto the image names cryopick uses (the image
file stem, :func:`cryopick.io.images.image_name`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import PurePosixPath, PureWindowsPath
from typing import Iterable

from cryopick import picks as P
from cryopick.errors import CryopickError
from cryopick.io.formats._common import COORD_EXTENSIONS, NAME_SUFFIXES
from cryopick.io.images import IMAGE_SUFFIXES
from cryopick.picks import Picks


def _basename(name: str) -> str:
    return PureWindowsPath(PurePosixPath(str(name)).name).name


def _image_key(name: str | os.PathLike) -> str:
    """Image name as cryopick names micrographs: base name without an image extension."""
    base = _basename(str(name))
    lower = base.lower()
    for ext in sorted(IMAGE_SUFFIXES | {".ome.zarr", ".zarr"}, key=len, reverse=True):
        if lower.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def normalise_name(name: str) -> str:
    """Loose key for matching: base name without image/coordinate extensions or picker suffixes."""
    base = _basename(name)
    changed = True
    while changed:
        changed = False
        lower = base.lower()
        for ext in sorted(IMAGE_SUFFIXES | set(COORD_EXTENSIONS) | {".ome.zarr", ".zarr", ".mrc.gz"},
                          key=len, reverse=True):
            if lower.endswith(ext) and len(base) > len(ext):
                base, changed = base[: -len(ext)], True
                break
        for suffix in NAME_SUFFIXES:
            if base.endswith(suffix) and len(base) > len(suffix):
                base, changed = base[: -len(suffix)], True
                break
    return base


def match_micrograph_names(picks: Picks, image_names: Iterable[str | os.PathLike],
                           allow_unmatched: bool = False, source: str | None = None) -> Picks:
    """Rename the picks' micrographs to the given image names, matching robustly.

    A pick name matches an image when they are equal, or equal after removing directories, image and
    coordinate extensions and the suffixes ``_autopick``, ``_manualpick``, ``_particles``, ``_picks``,
    ``_coords`` (case-insensitive as a last resort, when that is unambiguous).

    Parameters
    ----------
    picks
        Picks whose ``micrograph`` column is to be matched.
    image_names
        Image names or paths (paths are reduced with :func:`cryopick.io.images.image_name`).
    allow_unmatched
        Drop picks of micrographs with no image (with a warning) instead of raising.
    source
        File the picks came from, for messages (default: ``picks.meta["source"]``).

    Returns
    -------
    Picks
        Same picks, ``micrograph`` set to the matching image name.

    Raises
    ------
    CryopickError
        Listing the names that match no image (or match several) and how to fix it.
    """
    source = source or picks.meta.get("source", "picks")
    images = [_image_key(n) for n in image_names]
    exact = set(images)
    loose: dict[str, list[str]] = {}
    folded: dict[str, list[str]] = {}
    for img in images:
        loose.setdefault(normalise_name(img), []).append(img)
        folded.setdefault(normalise_name(img).lower(), []).append(img)
    mapping: dict[str, str] = {}
    unmatched, ambiguous = [], []
    for name in picks.micrographs:
        if name in exact:
            mapping[name] = name
            continue
        key = normalise_name(name)
        candidates = loose.get(key) or folded.get(key.lower()) or []
        candidates = list(dict.fromkeys(candidates))
        if len(candidates) == 1:
            mapping[name] = candidates[0]
        elif candidates:
            ambiguous.append(f"{name} -> {' / '.join(candidates[:3])}")
        else:
            unmatched.append(name)
    if ambiguous:
        raise CryopickError(
            f"{source}: micrograph name(s) match several images: {'; '.join(ambiguous[:5])}; "
            "give each image a distinct name"
        )
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" (+{len(unmatched) - 5} more)" if len(unmatched) > 5 else "")
        example = ", ".join(images[:3]) or "none"
        message = (f"{source}: {len(unmatched)} of {len(picks.micrographs)} micrograph name(s) match no image: "
                   f"{shown} (images are named like: {example}); rename the coordinate files to the image "
                   "file stems or pass the matching images")
        if not allow_unmatched:
            raise CryopickError(message)
        warnings.warn(message + "; their picks are dropped", stacklevel=2)
    keep = picks.table["micrograph"].isin(mapping.keys())
    out = picks._with(picks.table[keep])
    return P.rename_micrographs(out, mapping)
