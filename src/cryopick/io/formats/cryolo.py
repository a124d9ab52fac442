"""crYOLO ``.cbox`` files (crYOLO >= 1.8: STAR syntax).

Layout (as crYOLO writes it)::

    data_global

    _version 1.0

    data_cryolo

    loop_
    _CoordinateX #1
    _CoordinateY #2
    _CoordinateZ #3
    _Width #4
    _Height #5
    _Depth #6
    _EstWidth #7
    _EstHeight #8
    _Confidence #9
    _NumBoxes #10
    _Angle #11
    1161.0  620.0  <NA>  220  220  <NA>  150.0  146.0  0.91  <NA>  <NA>

Convention
----------
- ``_CoordinateX/Y`` is the **lower-left corner** of the box: centre = corner + ``_Width/2``,
  ``_Height/2`` (pixels; same rows as the MRC array, no flip). ``_CoordinateZ`` (3D) is the centre slice.
- ``_EstWidth/_EstHeight`` are crYOLO's estimated particle size; their mean is read as the diameter
  (the box width when they are missing). ``_Confidence`` is the score. ``<NA>`` means no value.
- Older crYOLO wrote tab-separated rows without a header: ``x y width height [confidence ...]``;
  those are read too.
- One micrograph / tomogram per file, ``<micrograph>.cbox``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.io.formats._common import (
    diameters_or,
    finish,
    first_line,
    micrograph_name_from_path,
    numeric,
    read_text,
    require_columns,
    single_micrograph,
    split_rows,
)
from cryopick.picks import Picks

NAME = "cryolo"
EXTENSIONS = (".cbox",)
DEFAULT_SUFFIX = ".cbox"
MULTI_MICROGRAPH = False
NDIM = (2, 3)
VERSION = "1.0"
DESCRIPTION = "a crYOLO .cbox file (STAR layout with _CoordinateX/_CoordinateY/_Width/_Height)"

_COLUMNS = ["CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth",
            "EstWidth", "EstHeight", "Confidence", "NumBoxes", "Angle"]


def read(path: str | os.PathLike, micrograph: str | None = None, diameter: float | None = None,
         pixel_size: float | None = None, **_: object) -> Picks:
    """Read a crYOLO ``.cbox`` file (STAR layout, or the headerless legacy layout)."""
    import starfile

    text = read_text(path, DESCRIPTION)
    name = micrograph or micrograph_name_from_path(path)
    if "_CoordinateX" not in text:
        return _read_legacy(path, text, name, diameter, pixel_size)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise CryopickError(f"{path}: not a readable crYOLO .cbox file ({first_line(exc)}); expected {DESCRIPTION}") from exc
    table = blocks.get("cryolo")
    if table is None:
        table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and "CoordinateX" in b.columns), None)
    if not isinstance(table, pd.DataFrame):
        raise CryopickError(f"{path}: no data_cryolo table with _CoordinateX found; expected {DESCRIPTION}")
    require_columns(table, ["CoordinateX", "CoordinateY", "Width", "Height"], path, "crYOLO .cbox")
    n = len(table)
    col = {c: numeric(table[c], path, "_" + c) if c in table.columns else np.full(n, np.nan) for c in _COLUMNS}
    x = col["CoordinateX"] + col["Width"] / 2.0
    y = col["CoordinateY"] + col["Height"] / 2.0
    z = col["CoordinateZ"]
    is_3d = n > 0 and bool(np.isfinite(z).all())
    est_w, est_h = col["EstWidth"], col["EstHeight"]
    est = np.where(np.isfinite(est_w) & np.isfinite(est_h), (est_w + est_h) / 2.0,
                   np.where(np.isfinite(est_w), est_w, est_h))
    size = np.where(np.isfinite(est) & (est > 0), est, col["Width"])
    frame = pd.DataFrame({"micrograph": name, "x": x, "y": y}, index=range(n))
    if is_3d:
        frame["z"] = z
    frame["score"] = col["Confidence"]
    frame["diameter"] = size if diameter is None else float(diameter)
    return finish(Picks(frame, pixel_size=pixel_size, ndim=3 if is_3d else 2), path)


def _read_legacy(path, text: str, name: str, diameter, pixel_size) -> Picks:
    rows = split_rows(text)
    if rows and min(len(r) for r in rows) < 4:
        raise CryopickError(f"{path}: neither a STAR .cbox (no _CoordinateX) nor rows of x y width height; expected "
                             f"{DESCRIPTION}")
    n = len(rows)
    col = [numeric([r[i] if i < len(r) else None for r in rows], path, f"column {i + 1}") for i in range(5)]
    frame = pd.DataFrame({"micrograph": name, "x": col[0] + col[2] / 2.0, "y": col[1] + col[3] / 2.0,
                          "score": col[4], "diameter": col[2] if diameter is None else float(diameter)},
                         index=range(n))
    return finish(Picks(frame, pixel_size=pixel_size, ndim=2), path)


def write(picks: Picks, path: str | os.PathLike, box_size: float | None = None, diameter: float | None = None,
          decimals: int = 6, **_: object) -> None:
    """Write one micrograph's (or tomogram's) picks as a crYOLO 1.8+ ``.cbox`` file, atomically.

    Parameters
    ----------
    box_size
        ``_Width/_Height`` in pixels (default: each pick's diameter); ``_EstWidth/_EstHeight`` are the
        picks' diameters (the box size when they have none).
    """
    import starfile

    single_micrograph(picks, path, "crYOLO .cbox")
    n = len(picks)
    d = diameters_or(picks, box_size if box_size is not None else diameter, path, "crYOLO .cbox")
    box = np.full(n, float(box_size)) if box_size is not None else d
    coords = picks.coords
    na = np.full(n, np.nan)
    table = pd.DataFrame({
        "CoordinateX": coords[:, 0] - box / 2.0,
        "CoordinateY": coords[:, 1] - box / 2.0,
        "CoordinateZ": coords[:, 2] if picks.ndim == 3 else na,
        "Width": box, "Height": box,
        "Depth": box if picks.ndim == 3 else na,
        "EstWidth": d, "EstHeight": d,
        "Confidence": picks.scores,
        "NumBoxes": na, "Angle": na,
    })
    with atomic_path(path) as tmp:
        starfile.write({"global": {"version": VERSION}, "cryolo": table}, tmp,
                       float_format=f"%.{decimals}f", na_rep="<NA>")
