"""Column detection for coordinate CSV files: CryoPPP and the plain tables people make by hand.

Accepted layouts (header names matched case-insensitively, ignoring spaces, ``-``, ``_`` and a
leading ``_``/``rln``):

- CryoPPP: ``X-Coordinate, Y-Coordinate[, Diameter]``;
- plain: ``x, y[, z][, score][, diameter][, micrograph][, class]`` with the spellings other tools
  write (``x_coord`` as Topaz, ``rlnCoordinateX`` as RELION, ``CoordinateX`` as crYOLO, ``X`` as
  Fiji / ImageJ, ``pos_x``, ``center_x``, ...);
- napari points layers: ``axis-0, axis-1[, axis-2]`` in array order (``y, x`` or ``z, y, x``);
- no header: two numbers per row are ``x y``, three are ``x y z`` (the IMOD convention for rows of
  numbers); a header is needed for anything else (score, diameter, ...).

Rows may be separated by commas, tabs or semicolons. Nothing is converted: coordinates are taken as
written (pixels; see :mod:`cryopick.io.coords` for flips and rescaling).
"""

from __future__ import annotations

import csv
import io
import os
import re

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.formats._common import first_line, numeric

#: role -> accepted header spellings, normalised by :func:`normalise_header`
ALIASES: dict[str, tuple[str, ...]] = {
    "x": ("x", "xcoord", "xcoordinate", "coordinatex", "posx", "positionx", "centerx", "centrex", "xcenter",
          "xcentre", "xpx", "xpixel", "xpixels", "xpos"),
    "y": ("y", "ycoord", "ycoordinate", "coordinatey", "posy", "positiony", "centery", "centrey", "ycenter",
          "ycentre", "ypx", "ypixel", "ypixels", "ypos"),
    "z": ("z", "zcoord", "zcoordinate", "coordinatez", "posz", "positionz", "centerz", "centrez", "zcenter",
          "zcentre", "zpx", "zpixel", "zpixels", "zpos"),
    "score": ("score", "confidence", "confidencescore", "fom", "figureofmerit", "autopickfigureofmerit",
              "probability", "prob"),
    "diameter": ("diameter", "diameterpx", "diameterpixels", "particlediameter", "diam"),
    "micrograph": ("micrograph", "micrographname", "imagename", "image", "mic", "tomogram", "tomo", "tomoname",
                   "tomogramname", "runname", "filename"),
    "label": ("class", "classname", "label", "object", "objectname", "pickableobjectname", "particletype"),
}
_NAPARI = re.compile(r"axis(\d)")


def normalise_header(name: str) -> str:
    """``"X-Coordinate"`` -> ``"xcoordinate"``, ``"_rlnCoordinateX"`` -> ``"coordinatex"``."""
    key = re.sub(r"[^0-9a-z]", "", str(name).lower())
    return key[3:] if key.startswith("rln") and len(key) > 3 else key


def _delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else r"\s+"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_table(text: str, path: str | os.PathLike, what: str) -> tuple[pd.DataFrame, dict[str, str], str]:
    """Parse CSV ``text`` and find its coordinate columns.

    Returns
    -------
    table
        All columns as read (text).
    roles
        ``{"x": column, "y": column[, "z", "score", "diameter", "micrograph", "label"]: column}``.
    layout
        ``"cryoppp"``, ``"plain"``, ``"napari"`` or ``"headerless"``.
    """
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise CryopickError(f"{path}: empty file; expected {what}")
    sep = _delimiter(lines[0])
    first = ([c.strip() for c in next(csv.reader([lines[0]], delimiter=sep))] if sep != r"\s+"
             else lines[0].split())
    headerless = all(_is_number(c) for c in first if c != "")
    try:
        table = pd.read_csv(io.StringIO("\n".join(lines)), sep=sep, engine="python", dtype=str,
                            header=None if headerless else "infer", skipinitialspace=True, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error) as exc:
        raise CryopickError(f"{path}: not a readable CSV table ({first_line(exc)}); expected {what}") from exc
    if headerless:
        width = table.shape[1]
        if width not in (2, 3):
            raise CryopickError(
                f"{path}: {width} numbers per row and no header; without a header only 'x y' or 'x y z' rows "
                f"are understood: add a header line such as x,y,score,diameter (expected {what})")
        table.columns = ["x", "y", "z"][:width]
        return table, {c: c for c in table.columns}, "headerless"
    table.columns = [str(c).strip() for c in table.columns]
    dupes = sorted({c for c in first if first.count(c) > 1})
    if dupes:
        raise CryopickError(f"{path}: column(s) {', '.join(dupes)} appear more than once in the header; "
                            "remove the duplicates")
    keys = {c: normalise_header(c) for c in table.columns}
    roles: dict[str, str] = {}
    for role, names in ALIASES.items():
        hits = [c for c, k in keys.items() if k in names]
        if len(hits) > 1:
            raise CryopickError(f"{path}: several columns could be {role!r} ({', '.join(hits)}); "
                                "rename or remove all but one")
        if hits:
            roles[role] = hits[0]
    layout = "cryoppp" if roles.get("x") == "X-Coordinate" else "plain"
    if "x" not in roles and "y" not in roles:
        axes = sorted((int(m.group(1)), c) for c, k in keys.items() if (m := _NAPARI.fullmatch(k)))
        if len(axes) in (2, 3) and [a for a, _ in axes] == list(range(len(axes))):
            for role, (_, column) in zip(("z", "y", "x")[3 - len(axes):], axes):
                roles[role] = column
            layout = "napari"
    missing = [r for r in ("x", "y") if r not in roles]
    if missing:
        if layout == "cryoppp" or roles.get("y") == "Y-Coordinate":
            missing = [f"{m.upper()}-Coordinate" for m in missing]
        found = ", ".join(table.columns) or "none"
        raise CryopickError(
            f"{path}: not a coordinate CSV, missing column(s) {', '.join(missing)} (found: {found}); expected "
            f"{what}")
    return table, roles, layout


def column(table: pd.DataFrame, name: str | None, path: str | os.PathLike) -> np.ndarray:
    """Column ``name`` as float64 (all NaN when ``name`` is None); text that is not a number is an error."""
    if name is None:
        return np.full(len(table), np.nan)
    return numeric(table[name], path, name)
