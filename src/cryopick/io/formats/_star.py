"""STAR-file helpers shared by the RELION modules (:mod:`.relion`, :mod:`.relion_tomo`): read every data
block with ``starfile`` (teamtomo) into tables with one-line errors, find a block by its columns, write
atomically, and RELION's figure-of-merit column (``-999`` = no value)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.io.formats._common import first_line, numeric

FOM = "rlnAutopickFigureOfMerit"
UNSET = -999.0


def read_blocks(path: Path, description: str) -> dict[str, pd.DataFrame]:
    """Every loop/table of a STAR file, by block name (``data_`` -> ``""``); ``description`` says what
    was expected, in the error of a missing, binary or malformed file."""
    import starfile

    if not path.exists():
        raise CryopickError(f"{path}: no such file")
    if path.is_dir():
        raise CryopickError(f"{path}: is a directory, expected {description}")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=["rlnTomoName"])
    except UnicodeDecodeError as exc:
        raise CryopickError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); expected "
                            f"{description}") from exc
    except Exception as exc:  # starfile raises assorted parser errors on malformed files
        raise CryopickError(f"{path}: not a readable STAR file ({first_line(exc)}); expected {description}") from exc
    # A one-row table may be written without loop_ (``data_general``): starfile gives a dict.
    blocks = {name: block if isinstance(block, pd.DataFrame) else pd.DataFrame([block])
              for name, block in blocks.items() if isinstance(block, pd.DataFrame) or (isinstance(block, dict) and block)}
    if not blocks:
        raise CryopickError(f"{path}: no data table found; expected {description}")
    for name, block in blocks.items():
        columns = [str(c) for c in block.columns]
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise CryopickError(f"{path}: column(s) {', '.join('_' + c for c in dupes)} appear more than once in "
                                f"data_{name}; remove the duplicate loop_ label(s)")
    return blocks


def find_block(blocks: dict[str, pd.DataFrame], *columns: str) -> pd.DataFrame | None:
    """The first block holding all ``columns`` (``particles``, ``coordinate_files``, ``global`` and
    ``data_`` first)."""
    for preferred in ("particles", "coordinate_files", "global", ""):
        block = blocks.get(preferred)
        if block is not None and all(c in block.columns for c in columns):
            return block
    for block in blocks.values():
        if all(c in block.columns for c in columns):
            return block
    return None


def write_star(blocks: dict[str, pd.DataFrame], path: str | os.PathLike, float_format: str = "%.6f") -> None:
    """Write ``blocks`` as one STAR file, atomically."""
    import starfile

    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format=float_format)


def scores(table: pd.DataFrame, path: Path) -> np.ndarray:
    """``_rlnAutopickFigureOfMerit`` as scores (NaN where absent or ``-999``)."""
    if FOM not in table.columns:
        return np.full(len(table), np.nan)
    s = numeric(table[FOM], path, FOM)
    return np.where(s == UNSET, np.nan, s)


def fom(score: np.ndarray) -> np.ndarray:
    """Scores as ``_rlnAutopickFigureOfMerit`` (``-999`` where there is none)."""
    s = np.asarray(score, dtype=np.float64)
    return np.where(np.isfinite(s), s, UNSET)
