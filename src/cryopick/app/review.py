"""Review of 2D picks in ``cryopick app``: the picks a threshold and a minimum distance keep, accepting them
as annotations (for a second round of training), and the per-micrograph review record.

The page filters the drawn picks itself (no network rerun); :func:`visible` is the same rule on the
server, so "accept" turns exactly the picks shown into annotations. ``picks/reviewed.json`` records,
per micrograph, how many picks were accepted and at which settings (the list's "accepted" count and
its reviewed / to-review filters).
"""

from __future__ import annotations

import math

import numpy as np

from cryopick.app.project import _read_json, check_name
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps

STATUSES = ("all", "annotated", "unannotated", "picked", "unreviewed", "reviewed", "complete", "partial", "empty")


def visible(coords, scores, rejected, threshold: float, min_distance_px: float, near: float) -> list[list[float]]:
    """Picks scoring at least ``threshold``, not within ``near`` px of a rejected one; with a minimum
    distance, the best-scoring pick of any closer pair is kept (greedy by score, as the page draws them)."""
    idx = [i for i, (c, s) in enumerate(zip(coords, scores))
           if s is not None and s >= threshold and not any(math.hypot(c[0] - r[0], c[1] - r[1]) <= near for r in rejected)]
    if not min_distance_px > 0:
        return [list(coords[i]) for i in idx]
    idx.sort(key=lambda i: -scores[i])
    kept: list[list[float]] = []
    for i in idx:
        x, y = coords[i]
        if not any(math.hypot(kx - x, ky - y) < min_distance_px for kx, ky in kept):
            kept.append(list(coords[i]))
    return kept


def reviewed(project) -> dict[str, dict]:
    """Per micrograph: ``{"accepted": n, "kept", "threshold", "min_distance"}``: the picks accepted so far
    (all accepts together) and the settings of the last one."""
    data = _read_json(project.picks_dir / "reviewed.json")
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("accepted"), int)}


def accept(project, name: str, threshold, min_distance, version) -> dict:
    """Add the picks of ``name`` that the review keeps (``threshold``; ``min_distance`` in particle
    diameters; rejected ones left out) to its annotations, skipping any within a quarter diameter of an
    annotation; versioned like every annotation write (:class:`~cryopick.app.project.Conflict`).

    Returns the new annotations with ``accepted`` (picks added) and ``kept`` (picks the review keeps)."""
    check_name(name)
    for key, value, hi in (("threshold", threshold, 1.0), ("min_distance", min_distance, 10.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
            raise ValueError(f"{key} must be a number between 0 and {hi:g}, got {str(value)[:40]}")
    if not isinstance(version, str):
        raise ValueError("version must be the string returned by the last read of the annotations")
    diameter = project.settings()["diameter"]
    with project.lock:
        picks = project.picks(name)
        if not picks["coords"]:
            raise ValueError(f"{name} has no picks to accept: pick it first")
        kept = visible(picks["coords"], picks["scores"], picks["rejected"], float(threshold),
                       float(min_distance) * diameter, diameter / 4)
        current = project.annotations(name)
        coords = [list(c) for c in current["coords"]]
        added = 0
        for x, y in kept:
            if not any(math.hypot(cx - x, cy - y) < diameter / 4 for cx, cy in coords):
                coords.append([x, y])
                added += 1
        out = project.save_annotations(name, coords, version)
        data = reviewed(project)
        data[name] = {"accepted": data.get(name, {}).get("accepted", 0) + added, "kept": len(kept), "threshold": round(float(threshold), 4),
                      "min_distance": round(float(min_distance), 4)}
        write_text(project.picks_dir / "reviewed.json", dumps(data, indent=1) + "\n")
    return {**out, "accepted": added, "kept": len(kept)}


def summary(project) -> list[dict]:
    """The list's rows (:meth:`Project.summary`) with ``accepted``: picks accepted in review (None: not reviewed)."""
    accepted = reviewed(project)
    return [{**row, "accepted": accepted.get(row["name"], {}).get("accepted")} for row in project.summary()]


def filter_rows(rows: list[dict], status: str | None) -> list[dict]:
    """The list's rows with a status (see :data:`STATUSES`)."""
    status = status or "all"
    tests = {
        "all": lambda r: True,
        "annotated": lambda r: r["annotated"] or r["flag"] == "empty",
        "unannotated": lambda r: not r["annotated"] and r["flag"] != "empty",
        "picked": lambda r: r["picked"] is not None,
        "unreviewed": lambda r: r["picked"] is not None and r["accepted"] is None,
        "reviewed": lambda r: r["accepted"] is not None,
    }
    if status in ("complete", "partial", "empty"):
        return [r for r in rows if r["flag"] == status]
    if status not in tests:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    return [r for r in rows if tests[status](r)]


def counts(rows: list[dict]) -> dict[str, int]:
    """How many micrographs have each status, and the particles labelled, for the list's header."""
    out = {s: len(filter_rows(rows, s)) for s in STATUSES}
    out["particles"] = int(np.sum([r["annotated"] for r in rows])) if rows else 0
    return out
