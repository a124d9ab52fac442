"""CryoPPP CSV: ``X-Coordinate,Y-Coordinate,Diameter`` per micrograph.

Convention
----------
- One file per micrograph, named after it (``<micrograph>.csv``).
- ``X-Coordinate`` is the column and ``Y-Coordinate`` the row of the particle **centre**, in pixels,
  with y counted from the **top of the published JPEG**. The CryoPPP JPEGs are the MRC arrays flipped
  vertically, so a CryoPPP y is *not* an MRC row. This reader does **not** flip: pass
  ``flip_y=True`` with the image height to :func:`cryopick.io.coords.read_picks` (or ``--flip-y
  --height H`` to ``cryopick convert``) when the picks must land on the MRC.
- ``Diameter`` is the particle diameter in pixels.

Extensions beyond the CryoPPP files (optional columns, read and written by cryopick): ``Score`` and,
for a merged multi-micrograph file, ``Micrograph``.
"""

from __future__ import annotations

import io
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
    require_columns,
    single_micrograph,
)
from cryopick.picks import Picks

NAME = "cryoppp"
EXTENSIONS = (".csv",)
DEFAULT_SUFFIX = ".csv"
MULTI_MICROGRAPH = False  # one micrograph per file unless the optional Micrograph column is used
NDIM = (2,)
MERGE_OPTION = "micrograph_column"  # write_picks(..., per_micrograph=False) sets it

X, Y, DIAMETER, SCORE, MICROGRAPH = "X-Coordinate", "Y-Coordinate", "Diameter", "Score", "Micrograph"
_SCORE_ALIASES = ("Score", "Confidence", "Confidence Score", "score")


def read(path: str | os.PathLike, micrograph: str | None = None, diameter: float | None = None,
         pixel_size: float | None = None, **_: object) -> Picks:
    """Read a CryoPPP CSV.

    Parameters
    ----------
    path
        The ``.csv`` file.
    micrograph
        Micrograph name; default: the file stem (or the ``Micrograph`` column when present).
    diameter
        Diameter in pixels for rows without one.
    pixel_size
        Å/px of the micrograph the coordinates refer to (CryoPPP files do not state it).

    Returns
    -------
    Picks
        2D picks in the file's frame (y from the top of the JPEG; see module docstring).
    """
    text = read_text(path)
    try:
        table = pd.read_csv(io.StringIO(text), skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CryopickError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    require_columns(table, [X, Y], path, "CryoPPP CSV (X-Coordinate,Y-Coordinate,Diameter)")
    n = len(table)
    if micrograph is None:
        names = (table[MICROGRAPH].astype(str).to_numpy() if MICROGRAPH in table.columns
                 else np.full(n, micrograph_name_from_path(path), dtype=object))
    else:
        names = np.full(n, micrograph, dtype=object)
    d = numeric(table[DIAMETER], path, DIAMETER) if DIAMETER in table.columns else np.full(n, np.nan)
    if diameter is not None:
        d = np.where(np.isfinite(d), d, float(diameter))
    score_col = next((c for c in _SCORE_ALIASES if c in table.columns), None)
    s = numeric(table[score_col], path, score_col) if score_col else np.full(n, np.nan)
    frame = pd.DataFrame({
        "micrograph": names,
        "x": numeric(table[X], path, X),
        "y": numeric(table[Y], path, Y),
        "score": s,
        "diameter": d,
    })
    return finish(Picks(frame, pixel_size=pixel_size, ndim=2), path)


def write(picks: Picks, path: str | os.PathLike, decimals: int = 6, micrograph_column: bool = False,
          diameter: float | None = None, **_: object) -> None:
    """Write picks of one micrograph as a CryoPPP CSV, atomically.

    Parameters
    ----------
    picks
        2D picks of a single micrograph (several only with ``micrograph_column=True``).
    path
        Output ``.csv``.
    decimals
        Maximum decimals; whole numbers are written without a decimal point, as CryoPPP does.
    micrograph_column
        Add a ``Micrograph`` column so one file can hold several micrographs (a cryopick extension).
    diameter
        Diameter in pixels for picks without one (the ``Diameter`` cell is left empty otherwise).
    """
    if picks.ndim != 2:
        raise CryopickError(f"{path}: CryoPPP CSV is a 2D format; these picks are 3D")
    if not micrograph_column:
        single_micrograph(picks, path, "CryoPPP CSV")
    t = picks.table
    d = t["diameter"].to_numpy(dtype=np.float64)
    if diameter is not None:
        d = np.where(np.isfinite(d), d, float(diameter))
    has_score = bool(np.isfinite(t["score"].to_numpy(dtype=np.float64)).any())
    header = ([MICROGRAPH] if micrograph_column else []) + [X, Y, DIAMETER] + ([SCORE] if has_score else [])
    lines = [",".join(header)]
    for i, row in enumerate(t.itertuples(index=False)):
        cells = [str(row.micrograph)] if micrograph_column else []
        cells += [format_number(row.x, decimals), format_number(row.y, decimals),
                  format_number(d[i], decimals) if np.isfinite(d[i]) else ""]
        if has_score:
            cells.append(format_number(row.score, decimals) if np.isfinite(row.score) else "")
        lines.append(",".join(cells))
    write_text(Path(path), "\n".join(lines) + "\n")
