"""What a cryopick output folder says about its picks, beyond the coordinate files.

Coordinate formats such as RELION STAR store no particle size, but a folder written by ``cryopick
pick`` (``summary.json`` naming the model, whose ``card.json`` holds the diameter) or ``cryopick
baseline`` (``baseline.json``) knows it. :func:`run_diameter` finds it, so exporting those picks to a
format that needs a box size (EMAN2 ``.box``, crYOLO ``.cbox``) does not ask for ``--diameter``
again. :func:`run_threshold` finds the score threshold the picks were written with, so an evaluation
can say that its precision-recall curve stops where the written picks stop.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

#: files of an output folder that may state the particle diameter (pixels of the picks' frame)
RUN_FILES = ("summary.json", "baseline.json")


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _model_diameter(model: str, folder: Path) -> tuple[float, Path] | None:
    for base in (Path(model), folder.parent / model, folder / model):
        card = _load(base / "card.json") if base.is_dir() else None
        if card is not None and (d := _positive(card.get("diameter"))) is not None:
            return d, base / "card.json"
    return None


def run_diameter(path: str | os.PathLike) -> tuple[float, Path] | None:
    """``(diameter in pixels, file that states it)`` for picks read from ``path`` (a cryopick output
    folder or a file in one), or ``None`` when the folder does not say.

    Looks at ``summary.json`` (``diameter``, or the model card of ``model``) and ``baseline.json``
    (``settings.diameter``) in the folder.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for name in RUN_FILES:
        data = _load(folder / name)
        if data is None:
            continue
        settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
        for value in (data.get("diameter"), settings.get("diameter")):
            if (d := _positive(value)) is not None:
                return d, folder / name
        if isinstance(data.get("model"), str):
            found = _model_diameter(data["model"], folder)
            if found is not None:
                return found
    return None


def run_threshold(path: str | os.PathLike) -> tuple[float, Path] | None:
    """``(score threshold, file that states it)`` the picks under ``path`` were written with (only
    picks scoring at least this are in the folder), or ``None`` when the folder does not say.

    Looks at ``summary.json`` and ``baseline.json`` (``threshold``) and the finished-micrograph records
    ``.cryopick/*.json`` of ``cryopick pick``.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    candidates = [folder / name for name in RUN_FILES]
    state = folder / ".cryopick"
    if state.is_dir():
        candidates += sorted(p for p in state.glob("*.json") if p.name != "run.json")[:1]
    for candidate in candidates:
        data = _load(candidate)
        if data is None or "threshold" not in data:
            continue
        try:
            value = float(data["threshold"])
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            return value, candidate
    return None
