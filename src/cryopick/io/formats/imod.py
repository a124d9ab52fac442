"""IMOD point text files (``.coords``, as written by ``model2point`` or crYOLO / DeepFinder for 3D):
one particle per line, ``x y z`` (or ``x y`` for 2D).

Convention
----------
- Whitespace-separated numbers, the particle **centre** in pixels / voxels of the tomogram,
  x = column, y = row, z = section, same orientation as the MRC array.
- ``model2point -object -contour`` rows (``object contour x y z``) and ``-contour`` rows
  (``contour x y z``) are recognised by their column count; the object number becomes the label.
- Coordinates are taken as written. A file whose tool numbers from 1 (e.g. integer sections counted
  1..nz) can be read with ``origin=1`` (subtracted on read, added on write).
- One tomogram per file, ``<tomogram>.coords``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.formats._common import (
    finish,
    format_number,
    micrograph_name_from_path,
    numeric,
    read_text,
    single_micrograph,
    split_rows,
)
from cryopick.picks import Picks

NAME = "imod"
EXTENSIONS = (".coords", ".txt")
DEFAULT_SUFFIX = ".coords"
MULTI_MICROGRAPH = False
NDIM = (2, 3)
DESCRIPTION = "an IMOD point file (x y z per line, as model2point writes)"


def read(path: str | os.PathLike, micrograph: str | None = None, origin: float = 0.0,
         diameter: float | None = None, pixel_size: float | None = None, ndim: int | None = None,
         **_: object) -> Picks:
    """Read an IMOD point file.

    Parameters
    ----------
    origin
        Value of the first pixel's centre in the file (0 by default); subtracted.
    ndim
        Force 2 (``x y``) or 3 (``x y z``) when the column count alone is ambiguous (4 columns are read
        as ``contour x y z``).
    """
    rows = split_rows(read_text(path, DESCRIPTION))
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise CryopickError(f"{path}: rows have different numbers of values {sorted(widths)}; expected x y z per line")
    width = widths.pop() if widths else (ndim or 3)
    layout = {2: ("x", "y"), 3: ("x", "y", "z"), 4: ("contour", "x", "y", "z"),
              5: ("object", "contour", "x", "y", "z")}.get(width)
    if layout is None:
        raise CryopickError(f"{path}: {width} values per line; an IMOD point file has x y z (or object contour x y z)")
    if ndim == 2 and width == 3:
        raise CryopickError(f"{path}: three values per line is a 3D file (x y z)")
    cols = {name: numeric([r[i] for r in rows], path, name) for i, name in enumerate(layout)}
    n = len(rows)
    frame = pd.DataFrame({"micrograph": micrograph or micrograph_name_from_path(path)}, index=range(n))
    for axis in ("x", "y", "z"):
        if axis in cols:
            frame[axis] = cols[axis] - float(origin)
    frame["score"] = np.nan
    frame["diameter"] = np.nan if diameter is None else float(diameter)
    if "object" in cols:
        frame["label"] = [format_number(v, 0) for v in cols["object"]]
    return finish(Picks(frame, pixel_size=pixel_size, ndim=3 if "z" in cols else 2), path)


def write(picks: Picks, path: str | os.PathLike, origin: float = 0.0, decimals: int = 6, **_: object) -> None:
    """Write ``x y z`` (``x y`` for 2D picks) per line, atomically; ``origin`` is added."""
    single_micrograph(picks, path, "IMOD point")
    coords = picks.coords + float(origin)
    lines = [" ".join(format_number(v, decimals) for v in row) for row in coords]
    write_text(Path(path), "".join(line + "\n" for line in lines))
