"""Helpers shared by the coordinate-format modules.

Nothing here converts coordinates: every format module reads the file in the file's own frame and
returns pixel coordinates as the file states them (after the format's fixed rule, e.g. corner ->
centre). Flips, swaps and rescaling are explicit options applied by :mod:`cryopick.io.coords`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.picks import Picks, check_finite

#: Suffixes that picking programs append to the micrograph name in per-micrograph coordinate files.
NAME_SUFFIXES = ("_autopick", "_manualpick", "_particles", "_picks", "_coords")

#: Extensions of coordinate files (stripped when deriving a micrograph name from a file name).
COORD_EXTENSIONS = (".star", ".csv", ".box", ".cbox", ".txt", ".tsv", ".coords", ".json")


def micrograph_name_from_path(path: str | os.PathLike) -> str:
    """Micrograph name for a per-micrograph coordinate file: the file name without extension
    and without a picker suffix (``mic001_autopick.star`` -> ``mic001``)."""
    name = Path(path).name
    lower = name.lower()
    for ext in COORD_EXTENSIONS:
        if lower.endswith(ext):
            name = name[: -len(ext)]
            break
    return strip_name_suffixes(name)


def strip_name_suffixes(name: str) -> str:
    for suffix in NAME_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def format_number(value: float, decimals: int = 6) -> str:
    """Positional text for ``value`` with at most ``decimals`` decimals and no trailing zeros
    (``12.0`` -> ``"12"``, ``678.25`` -> ``"678.25"``)."""
    value = float(value)
    if not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def split_by_micrograph(picks: Picks):
    """``(name, picks)`` per micrograph in order of appearance, in one pass (groupby)."""
    for name, table in picks.table.groupby("micrograph", sort=False):
        yield str(name), picks._with(table)


def require_columns(table: pd.DataFrame, columns: Sequence[str], path: str | os.PathLike, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns)) or "none"
        raise CryopickError(
            f"{path}: not a valid {what} file, missing column(s) {', '.join(missing)} (found: {found})"
        )


_MISSING = {"<na>", "none", "", "na", "nan", "-nan", "+nan", "null"}


def numeric(values, path: str | os.PathLike, column: str) -> np.ndarray:
    """Column as float64; text that is not a number raises an error naming the file and column.

    Empty cells and ``<NA>`` / ``None`` / ``nan`` become NaN (callers decide whether NaN is allowed).
    """
    series = pd.Series(values)
    if not pd.api.types.is_numeric_dtype(series):
        series = series.astype(object).map(lambda v: np.nan if isinstance(v, str) and v.strip().lower() in _MISSING else v)
    out = pd.to_numeric(series, errors="coerce")
    bad = out.isna() & series.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CryopickError(
            f"{path}: column {column!r} has a non-numeric value {series.iloc[row]!r} at data row {row + 1}"
        )
    return out.to_numpy(dtype=np.float64)


def finish(picks: Picks, path: str | os.PathLike) -> Picks:
    """Final checks every reader applies: coordinates must be finite."""
    return check_finite(picks, str(path))


def first_line(exc: BaseException) -> str:
    """The first sentence of a library's error message (no multi-line dumps, no library advice)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    for cut in (". Error could possibly", ". You may", ". Please", ". If you"):
        if cut in text:
            text = text[: text.index(cut)]
    return text.rstrip(".")


def read_text(path: str | os.PathLike, what: str = "a coordinate file") -> str:
    """The text of a coordinate file; a missing, binary or unreadable file raises a one-line error
    naming the file and ``what`` was expected (e.g. ``"EMAN2 .box file (x y width height per line)"``)."""
    path = Path(path)
    if not path.exists():
        raise CryopickError(f"{path}: no such file")
    if path.is_dir():
        raise CryopickError(f"{path}: is a directory, expected {what}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CryopickError(f"{path}: cannot read ({exc.strerror or first_line(exc)}); expected {what}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CryopickError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); expected {what}") from exc
    if "\x00" in text:
        raise CryopickError(f"{path}: binary data (NUL bytes) in the file; expected {what}")
    return text.lstrip("\ufeff")  # a byte-order mark written by spreadsheet programs


def split_rows(text: str, comment: str = "#") -> list[list[str]]:
    """Whitespace- (or tab-) separated rows, skipping blank lines and comments."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(comment):
            continue
        rows.append(re.split(r"[\s,]+", line) if "\t" not in line else line.split("\t"))
    return rows


def single_micrograph(picks: Picks, path: str | os.PathLike, fmt: str) -> None:
    """Per-micrograph formats hold one micrograph per file."""
    names = picks.micrographs
    if len(names) > 1:
        raise CryopickError(
            f"{path}: the {fmt} format holds one micrograph per file but the picks cover {len(names)} "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); write to a directory (per-micrograph files)"
        )


def diameters_or(picks: Picks, default: float | None, path, fmt: str, what: str = "box size") -> np.ndarray:
    """Per-pick size in pixels: the picks' diameter, else ``default``; error if neither is known."""
    d = picks.table["diameter"].to_numpy(dtype=np.float64).copy()
    missing = ~np.isfinite(d)
    if missing.any():
        if default is None:
            raise CryopickError(
                f"{path}: the {fmt} format needs a {what} but {int(missing.sum())} pick(s) have no diameter; "
                "give one (--diameter D or --box-size B; box_size= / diameter= in Python)"
            )
        d[missing] = float(default)
    return d


def flatten(items: Iterable) -> list:
    return [i for group in items for i in group]


def voxel_size_for(picks: Picks, voxel_size: float | None, path, fmt: str) -> float:
    """Å per pixel of the picks' frame for a format that stores Å: the picks' own pixel size, or
    ``voxel_size`` when they have none; a disagreement between the two is an error."""
    own = picks.pixel_size
    if own is not None and voxel_size is not None and abs(own - float(voxel_size)) > 1e-6 * max(own, 1.0):
        raise CryopickError(
            f"{path}: voxel size {float(voxel_size):g} Å given but the picks are at {own:g} Å/px; "
            "rescale the picks explicitly (to_pixel_size / --to-pixel-size) instead"
        )
    value = own if own is not None else voxel_size
    if value is None:
        raise CryopickError(f"{path}: {fmt} stores Å; give the voxel size of the picks (--voxel-size A)")
    return float(value)
