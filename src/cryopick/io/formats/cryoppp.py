"""CSV coordinates: CryoPPP ``X-Coordinate,Y-Coordinate,Diameter`` files and plain ``x,y`` tables.

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

Reading also accepts the CSV tables made by hand or by other tools: ``x,y[,z][,score][,diameter]``
with common header spellings (``x``/``X``/``x_coord``/``rlnCoordinateX``/``CoordinateX``...,
case-insensitive), napari point layers (``axis-0,axis-1[,axis-2]``, array order) and headerless rows
of 2 (``x y``) or 3 (``x y z``) numbers; see :mod:`cryopick.io.formats._csv`. Such files are read
as written (no flip); ``picks.meta["csv_layout"]`` says which layout was found. Writing always uses
the CryoPPP header.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.formats._common import (
    finish,
    format_number,
    micrograph_name_from_path,
    read_text,
    single_micrograph,
)
from cryopick.io.formats._csv import column, read_table
from cryopick.io.images import IMAGE_SUFFIXES
from cryopick.picks import Picks

NAME = "cryoppp"
EXTENSIONS = (".csv",)
DEFAULT_SUFFIX = ".csv"
MULTI_MICROGRAPH = False  # one micrograph per file unless the optional Micrograph column is used
NDIM = (2,)
MERGE_OPTION = "micrograph_column"  # write_picks(..., per_micrograph=False) sets it

X, Y, DIAMETER, SCORE, MICROGRAPH = "X-Coordinate", "Y-Coordinate", "Diameter", "Score", "Micrograph"
DESCRIPTION = "a CSV coordinate file (CryoPPP X-Coordinate,Y-Coordinate,Diameter or x,y[,z][,score][,diameter])"


def read(path: str | os.PathLike, micrograph: str | None = None, diameter: float | None = None,
         pixel_size: float | None = None, **_: object) -> Picks:
    """Read a CryoPPP CSV or a plain ``x,y[,z][,score][,diameter]`` CSV (see the module docstring).

    Parameters
    ----------
    path
        The ``.csv`` file.
    micrograph
        Micrograph name; default: the ``Micrograph`` (or ``micrograph``, ``image_name``...) column when
        present, else the file stem.
    diameter
        Diameter in pixels for rows without one.
    pixel_size
        Å/px of the micrograph the coordinates refer to (CryoPPP files do not state it).

    Returns
    -------
    Picks
        Picks in the file's frame (CryoPPP: y from the top of the JPEG; see module docstring); 3D
        when the file has a z column.
    """
    table, roles, layout = read_table(read_text(path, DESCRIPTION), path, DESCRIPTION)
    n = len(table)
    if micrograph is None:
        names = (np.array([_name(v) for v in table[roles["micrograph"]]], dtype=object) if "micrograph" in roles
                 else np.full(n, micrograph_name_from_path(path), dtype=object))
    else:
        names = np.full(n, micrograph, dtype=object)
    d = column(table, roles.get("diameter"), path)
    if diameter is not None:
        d = np.where(np.isfinite(d), d, float(diameter))
    frame = pd.DataFrame({"micrograph": names, "x": column(table, roles["x"], path),
                          "y": column(table, roles["y"], path)})
    if "z" in roles:
        frame["z"] = column(table, roles["z"], path)
    frame["score"] = column(table, roles.get("score"), path)
    frame["diameter"] = d
    if "label" in roles:
        frame["label"] = table[roles["label"]].astype(str).to_numpy()
    picks = finish(Picks(frame, pixel_size=pixel_size, ndim=3 if "z" in roles else 2), path)
    picks.meta["csv_layout"] = layout
    return picks


def _name(value) -> str:
    """Micrograph name from a cell: without directories or an image extension."""
    name = PureWindowsPath(PurePosixPath(str(value).strip()).name).name
    lower = name.lower()
    for ext in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


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
