"""copick picks JSON (one pickable object in one run), locations in **Ångström**.

Layout (copick ``CopickPicksFile``)::

    {"pickable_object_name": "ribosome", "user_id": "cryopick", "session_id": "0",
     "run_name": "TS_001", "voxel_spacing": 10.0, "unit": "angstrom",
     "points": [{"location": {"x": 1234.5, "y": 678.25, "z": 310.0},
                 "transformation_": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]],
                 "instance_id": 0, "score": 0.87}],
     "trust_orientation": false}

stored in a project as ``ExperimentRuns/<run>/Picks/<user_id>_<session_id>_<object>.json``.

Convention
----------
- ``location`` is the particle centre in Å: voxel index × voxel size (x = column, y = row,
  z = section; no half-voxel offset). Converting to voxels needs the voxel size: ``voxel_size``
  (or ``pixel_size``) option, else the file's ``voxel_spacing``; neither -> a clear error.
- The run name is the tomogram name; ``pickable_object_name`` becomes the label.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.formats._common import finish, read_text, split_by_micrograph, voxel_size_for
from cryopick.picks import Picks, concat

NAME = "copick"
EXTENSIONS = (".json",)
DEFAULT_SUFFIX = ".json"
MULTI_MICROGRAPH = False
NDIM = (3,)
_IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
DESCRIPTION = "a copick picks JSON file (points with locations in Å)"
_UNIT_TO_ANGSTROM = {"angstrom": 1.0, "a": 1.0, "å": 1.0, "nanometer": 10.0, "nm": 10.0}


def _run_from_path(path: Path) -> str:
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "Picks":
        return parts[-3]
    return path.stem


def read(path: str | os.PathLike, voxel_size: float | None = None, pixel_size: float | None = None,
         micrograph: str | None = None, diameter: float | None = None, **_: object) -> Picks:
    """Read one copick picks JSON into 3D picks in voxels.

    Parameters
    ----------
    voxel_size
        Å per voxel of the tomogram the picks should be expressed in (``pixel_size`` is a synonym).
        Default: the file's ``voxel_spacing``.
    micrograph
        Tomogram name (default: ``run_name``, else the run directory, else the file stem).
    """
    path = Path(path)
    try:
        doc = json.loads(read_text(path, DESCRIPTION))
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise CryopickError(f"{path}: not valid JSON{where}; expected {DESCRIPTION}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("points", []), list) or "points" not in doc:
        raise CryopickError(f"{path}: not a copick picks file (no 'points' list); expected {DESCRIPTION}")
    spacing = voxel_size if voxel_size is not None else pixel_size
    if spacing is None:
        spacing = _number(doc.get("voxel_spacing"), path, "voxel_spacing")
    if spacing is None or not float(spacing) > 0:
        raise CryopickError(
            f"{path}: copick locations are in Å; give the tomogram voxel size to convert them to voxels "
            "(--voxel-size A / voxel_size=)"
        )
    unit = str(doc.get("unit", "angstrom")).lower()
    if unit not in _UNIT_TO_ANGSTROM:
        raise CryopickError(f"{path}: unknown unit {doc.get('unit')!r}; expected 'angstrom'")
    factor = _UNIT_TO_ANGSTROM[unit] / float(spacing)
    points = doc.get("points") or []
    xyz = np.full((len(points), 3), np.nan)
    score = np.full(len(points), np.nan)
    for i, point in enumerate(points):
        loc = point.get("location") if isinstance(point, dict) else None
        if not isinstance(loc, dict) or not all(k in loc for k in "xyz"):
            raise CryopickError(f"{path}: point {i + 1} has no location with x, y, z")
        try:
            xyz[i] = [float(loc[k]) if loc[k] is not None else math.nan for k in "xyz"]
        except (TypeError, ValueError) as exc:
            raise CryopickError(f"{path}: point {i + 1} has a non-numeric location {loc}") from exc
        value = _number(point.get("score"), path, f"score of point {i + 1}")
        if value is not None:
            score[i] = value
    name = micrograph or doc.get("run_name") or _run_from_path(path)
    frame = pd.DataFrame({"micrograph": str(name), "x": xyz[:, 0] * factor, "y": xyz[:, 1] * factor,
                          "z": xyz[:, 2] * factor, "score": score,
                          "diameter": np.nan if diameter is None else float(diameter),
                          "label": str(doc.get("pickable_object_name", ""))}, index=range(len(points)))
    return finish(Picks(frame, pixel_size=float(spacing), ndim=3), path)


def _number(value, path, what: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CryopickError(f"{path}: {what} is not a number ({value!r}); expected {DESCRIPTION}") from None


def read_directory(directory: str | os.PathLike, **opts) -> Picks:
    """All picks JSONs under a copick project (or any directory), concatenated."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*.json") if p.name != "copick_config.json"
                   and not p.name.startswith("."))
    if not files:
        raise CryopickError(f"{directory}: no copick picks JSON files found")
    return concat([read(p, **opts) for p in files])


def write(picks: Picks, path: str | os.PathLike, voxel_size: float | None = None, object_name: str | None = None,
          user_id: str = "cryopick", session_id: str = "0", **_: object) -> None:
    """Write the picks of one tomogram and one label as a copick picks JSON, atomically.

    Parameters
    ----------
    voxel_size
        Å per voxel of the picks' frame, when ``picks.pixel_size`` is unknown (must agree with it
        otherwise).
    object_name
        ``pickable_object_name`` (default: the picks' label, else ``"particle"``).
    """
    if picks.ndim != 3:
        raise CryopickError(f"{path}: copick picks are 3D; these picks are 2D")
    spacing = voxel_size_for(picks, voxel_size, path, "copick")
    names = picks.micrographs
    labels = list(dict.fromkeys(picks.table["label"].tolist()))
    if len(names) > 1 or len(labels) > 1:
        raise CryopickError(
            f"{path}: a copick picks file holds one run and one object; these picks have {len(names)} "
            f"tomogram(s) and {len(labels)} label(s); write to a directory instead"
        )
    obj = object_name or (labels[0] if labels and labels[0] else "particle")
    points = []
    for (x, y, z), s in zip(picks.coords * float(spacing), picks.scores):
        points.append({"location": {"x": float(x), "y": float(y), "z": float(z)},
                       "transformation_": _IDENTITY, "instance_id": 0,
                       "score": float(s) if np.isfinite(s) else None})
    doc = {"pickable_object_name": obj, "user_id": user_id, "session_id": str(session_id),
           "run_name": names[0] if names else None, "voxel_spacing": float(spacing), "unit": "angstrom",
           "points": points, "trust_orientation": False}
    write_text(Path(path), json.dumps(doc, indent=1) + "\n")


def _tree(picks: Picks, directory: Path, user_id: str, session_id: str, object_name: str | None):
    """``(output path, object name, picks)`` per run and label of a copick overlay tree."""
    for run, sub in split_by_micrograph(picks):
        for label, table in sub.table.groupby("label", sort=False):
            obj = object_name or label or "particle"
            yield directory / "ExperimentRuns" / run / "Picks" / f"{user_id}_{session_id}_{obj}.json", obj, sub._with(table)


def directory_paths(picks: Picks, directory: str | os.PathLike, user_id: str = "cryopick", session_id: str = "0",
                    object_name: str | None = None, **_: object) -> list[Path]:
    """The files :func:`write_directory` would write."""
    return [out for out, _, _ in _tree(picks, Path(directory), user_id, session_id, object_name)]


def write_directory(picks: Picks, directory: str | os.PathLike, user_id: str = "cryopick",
                    session_id: str = "0", object_name: str | None = None, **opts) -> list[Path]:
    """Write a copick overlay tree: ``ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json``."""
    written = []
    for out, obj, part in _tree(picks, Path(directory), user_id, session_id, object_name):
        write(part, out, object_name=obj, user_id=user_id, session_id=session_id, **opts)
        written.append(out)
    return written
