"""Review in ``cryopick app``: the one rule for the picks a review shows (:func:`visible`, micrographs and
tomograms alike), accepting 2D picks as annotations (for a second round of training), and the
per-micrograph review record.

The pages filter the drawn picks themselves (no network rerun) with ``static/review.js``, the same rule;
an accept sends the picks shown and the server writes exactly those or nothing (:func:`check_shown`). ``picks/reviewed.json`` records,
per micrograph, how many picks were accepted and at which settings (the list's "accepted" count and
its reviewed / to-review filters).
"""

from __future__ import annotations

import math

import numpy as np

from cryopick.app.project import Busy, _read_json, check_name
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps

STATUSES = ("all", "annotated", "unannotated", "picked", "unreviewed", "reviewed", "complete", "partial", "empty")


def visible(coords, scores, rejected, threshold: float, min_distance: float, near: float) -> list[list[float]]:
    """The review's one visibility rule (2D and 3D; the pages' ``reviewVisible`` in ``static/review.js`` is
    the same rule, both checked against the cases of ``tests/data/review/visible.json``).

    A pick is shown when its score is at least ``threshold`` (a pick without a score only at threshold 0)
    and no rejected pick lies within ``near`` of it (a quarter of the particle diameter on both pages);
    with a minimum distance, the best-scoring pick of any closer pair is kept (greedy by score, ties in
    the given order). Distances are Euclidean over the coordinates given (x, y or x, y, z)."""
    return [list(coords[i]) for i in visible_index(coords, scores, rejected, threshold, min_distance, near)]


def visible_index(coords, scores, rejected, threshold: float, min_distance: float, near: float) -> list[int]:
    """The indices of the picks :func:`visible` keeps, in its order."""
    def passes(s) -> bool:
        return threshold <= 0 if s is None else s >= threshold

    idx = [i for i, (c, s) in enumerate(zip(coords, scores))
           if passes(s) and not any(math.dist(c, r) <= near for r in rejected)]
    if not min_distance > 0:
        return idx
    idx.sort(key=lambda i: math.inf if scores[i] is None else -scores[i])
    kept: list[int] = []
    for i in idx:
        if not any(math.dist(coords[i], coords[k]) < min_distance for k in kept):
            kept.append(i)
    return kept


def reviewed_picks(project, name: str, threshold: float, min_distance: float = 0.0) -> tuple[list, list]:
    """Coordinates and scores of the picks of ``name`` the review keeps (:func:`visible`; ``min_distance``
    in particle diameters), as the page draws them: what "export picks" writes."""
    data = project.picks(name)
    diameter = project.settings()["diameter"]
    idx = visible_index(data["coords"], data["scores"], data["rejected"], threshold, min_distance * diameter,
                        diameter / 4)
    return [data["coords"][i] for i in idx], [data["scores"][i] for i in idx]


def same_picks(shown, kept, digits: int = 2) -> bool:
    """Whether the picks a page says it shows are the picks the server would keep (as sets, rounded)."""
    def key(rows):
        return sorted(tuple(round(float(v), digits) for v in r) for r in rows)

    return key(shown) == key(kept)


def check_shown(shown, kept, what: str) -> None:
    """Refuse (:class:`~cryopick.app.project.Busy`, HTTP 409) an accept whose page showed other picks than
    the server would write; ``shown`` None: the request did not say (refused as a bad request)."""
    if not isinstance(shown, list) or len(shown) > 10 ** 6 or not all(
            isinstance(r, list) and 2 <= len(r) <= 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in r)
            for r in shown):
        raise ValueError("send the picks the page shows with the accept: \"shown\": [[x, y(, z)], ...] (numbers)")
    if not same_picks(shown, kept):
        raise Busy(f"the page shows {len(shown)} {what} but the server would accept {len(kept)} (the picks, "
                   "rejections or settings changed since the page loaded them); nothing was written: "
                   "the page reloaded them, check and accept again")


def reviewed(project) -> dict[str, dict]:
    """Per micrograph: ``{"accepted": n, "kept", "threshold", "min_distance"}``: the picks accepted so far
    (all accepts together) and the settings of the last one."""
    data = _read_json(project.picks_dir / "reviewed.json")
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("accepted"), int)}


def accept(project, name: str, threshold, min_distance, version, shown=None) -> dict:
    """Add the picks of ``name`` that the review keeps (``threshold``; ``min_distance`` in particle
    diameters; rejected ones left out) to its annotations, skipping any within a quarter diameter of an
    annotation; versioned like every annotation write (:class:`~cryopick.app.project.Conflict`).
    ``shown``: the picks the page draws; when given and not the ones kept here, nothing is written
    (:func:`check_shown`).

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
        if shown is not None:
            check_shown(shown, kept, f"picks of {name}")
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
