"""Topaz particle coordinates: tab-separated ``image_name  x_coord  y_coord  [score]`` with a header.

Convention
----------
- One file may hold many micrographs; ``image_name`` is the micrograph name without extension.
- ``x_coord, y_coord`` are the particle **centre** in pixels of the micrograph Topaz was given (often a
  downsampled one: rescale explicitly with ``scale``/``to_pixel_size``), same row order as the MRC array.
- ``score`` is Topaz's log-likelihood ratio (any real number; higher is better). Training label files
  have no score column.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.formats._common import (
    finish,
    first_line,
    format_number,
    micrograph_name_from_path,
    numeric,
    read_text,
    require_columns,
)
from cryopick.io.images import strip_image_suffix
from cryopick.picks import Picks

NAME = "topaz"
EXTENSIONS = (".txt", ".tsv")
DEFAULT_SUFFIX = ".txt"
MULTI_MICROGRAPH = True
NDIM = (2,)
DESCRIPTION = "a Topaz coordinate table (tab-separated image_name x_coord y_coord [score] with a header)"


def read(path: str | os.PathLike, micrograph: str | None = None, diameter: float | None = None,
         pixel_size: float | None = None, **_: object) -> Picks:
    """Read a Topaz coordinate table (``image_name`` column optional: default the file stem)."""
    text = read_text(path, DESCRIPTION)
    if not text.strip():
        raise CryopickError(f"{path}: empty file; a Topaz table needs the header image_name x_coord y_coord")
    sep = "\t" if "\t" in text.splitlines()[0] else r"\s+"
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, engine="python", comment="#", dtype={"image_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error) as exc:
        raise CryopickError(f"{path}: not a readable Topaz table ({first_line(exc)}); expected {DESCRIPTION}") from exc
    require_columns(table, ["x_coord", "y_coord"], path, "Topaz (image_name x_coord y_coord score)")
    n = len(table)
    if micrograph is not None:
        names = np.full(n, micrograph, dtype=object)
    elif "image_name" in table.columns:
        names = np.array([strip_image_suffix(str(v)) for v in table["image_name"]], dtype=object)
    else:
        names = np.full(n, micrograph_name_from_path(path), dtype=object)
    frame = pd.DataFrame({
        "micrograph": names,
        "x": numeric(table["x_coord"], path, "x_coord"),
        "y": numeric(table["y_coord"], path, "y_coord"),
        "score": numeric(table["score"], path, "score") if "score" in table.columns else np.nan,
        "diameter": np.nan if diameter is None else float(diameter),
    })
    return finish(Picks(frame, pixel_size=pixel_size, ndim=2), path)


def write(picks: Picks, path: str | os.PathLike, decimals: int = 6, **_: object) -> None:
    """Write a Topaz table (score column only when some pick has a score), atomically."""
    if picks.ndim != 2:
        raise CryopickError(f"{path}: Topaz coordinates are 2D; these picks are 3D")
    t = picks.table
    scores = t["score"].to_numpy(dtype=np.float64)
    has_score = bool(np.isfinite(scores).any())
    lines = ["\t".join(["image_name", "x_coord", "y_coord"] + (["score"] if has_score else []))]
    for (name, x, y), s in zip(t[["micrograph", "x", "y"]].itertuples(index=False), scores):
        cells = [str(name), format_number(x, decimals), format_number(y, decimals)]
        if has_score:
            cells.append(format_number(s, decimals) if np.isfinite(s) else "nan")
        lines.append("\t".join(cells))
    write_text(Path(path), "\n".join(lines) + "\n")
