"""EMAN2 / EMAN1 ``.box`` files: ``x  y  width  height`` per line, the box's **lower-left corner**.

Convention
----------
- One file per micrograph, ``<micrograph>.box``, tab separated, usually whole numbers.
- ``x, y`` is the corner of the box nearest the origin; the particle centre is
  ``x + width / 2, y + height / 2`` (pixels). "Lower-left" refers to EMAN2's display with y up, so
  y counts the same MRC rows as RELION / crYOLO / Topaz: no flip between ``.box`` and ``.star``.
- The box size is not the particle diameter; when reading, ``diameter`` is set to the box width unless
  a ``diameter`` is given. When writing, the box size is ``box_size`` if given, else each pick's diameter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.formats._common import (
    diameters_or,
    finish,
    format_number,
    micrograph_name_from_path,
    numeric,
    read_text,
    single_micrograph,
    split_rows,
)
from cryopick.picks import Picks

NAME = "eman2"
EXTENSIONS = (".box",)
DEFAULT_SUFFIX = ".box"
MULTI_MICROGRAPH = False
NDIM = (2,)
DESCRIPTION = "an EMAN2 .box file (x y width height per line, box corner in pixels)"


def read(path: str | os.PathLike, micrograph: str | None = None, box_size: float | None = None,
         diameter: float | None = None, pixel_size: float | None = None, **_: object) -> Picks:
    """Read an EMAN ``.box`` file (columns x, y[, width, height, ...]; extra columns ignored).

    Parameters
    ----------
    box_size
        Box size in pixels for files with only ``x y`` columns.
    diameter
        Particle diameter in pixels to store instead of the box width.
    """
    rows = split_rows(read_text(path, DESCRIPTION))
    widths = {len(r) for r in rows}
    if rows and min(widths) < 2:
        raise CryopickError(f"{path}: EMAN .box rows need at least x and y (found a row with {min(widths)} value)")
    if rows and min(widths) < 4 and box_size is None:
        raise CryopickError(
            f"{path}: EMAN .box rows have no width/height columns; give the box size (--diameter / box_size=)"
        )
    n = len(rows)
    cols = [numeric([r[i] if i < len(r) else None for r in rows], path, f"column {i + 1}") for i in range(4)]
    x, y = cols[0], cols[1]
    w = cols[2] if min(widths, default=4) >= 4 else np.full(n, float(box_size))
    h = cols[3] if min(widths, default=4) >= 4 else np.full(n, float(box_size))
    frame = pd.DataFrame({
        "micrograph": micrograph or micrograph_name_from_path(path),
        "x": x + w / 2.0,
        "y": y + h / 2.0,
        "score": np.nan,
        "diameter": w if diameter is None else float(diameter),
    }, index=range(n))
    return finish(Picks(frame, pixel_size=pixel_size, ndim=2), path)


def write(picks: Picks, path: str | os.PathLike, box_size: float | None = None, diameter: float | None = None,
          decimals: int = 6, **_: object) -> None:
    """Write one micrograph's picks as an EMAN ``.box`` file (corner = centre - box / 2), atomically.

    Parameters
    ----------
    box_size
        Box size in pixels (default: each pick's diameter, else ``diameter``).
    """
    if picks.ndim != 2:
        raise CryopickError(f"{path}: EMAN .box is a 2D format; these picks are 3D")
    single_micrograph(picks, path, "EMAN2 .box")
    size = (np.full(len(picks), float(box_size)) if box_size is not None
            else diameters_or(picks, diameter, path, "EMAN2 .box"))
    corner = picks.coords - size[:, None] / 2.0
    lines = ["\t".join(format_number(v, decimals) for v in (cx, cy, s, s)) for (cx, cy), s in zip(corner, size)]
    write_text(Path(path), "".join(line + "\n" for line in lines))
