"""Review of tomogram picks in ``cryopick app``, per class: a score threshold per class, rejections, and
accepting the reviewed picks as answers for a second round of ``pick3d``.

Accepting class ``L`` of tomogram ``T`` at threshold ``t`` writes, in ``PROJECT/answers3d/answers.csv``
(the ``answers.csv`` format of ``cryopick ask3d``, :class:`cryopick.picker3d.answers.Answers`), one row
per pick of ``L`` in ``T``: ``yes`` for those kept (score >= ``t``, not rejected), ``no`` for the rejected
ones; the rows of an earlier accept of the same tomogram and class are replaced. A Pick 3D job with
``answers`` adapts each prompt to them (``cryopick pick3d --answers PROJECT/answers3d/``), and the file
can be given to ``cryopick pick3d --answers`` by hand as well. ``picks3d/reviewed.json`` records
per tomogram and class what was accepted and at which threshold (the page's counts).
"""

from __future__ import annotations

import math

from cryopick.app.project import _read_json
from cryopick.app.review import check_shown, visible
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps


def answers_path(project):
    return project.root / "answers3d" / "answers.csv"


def split(data: dict, threshold: float, near: float) -> tuple[list, list, list]:
    """Picks of one class (``{"coords", "scores", "rejected"}``): (kept, rejected, the others). Kept: the
    review's one rule (:func:`cryopick.app.review.visible`, no minimum distance); rejected: within ``near``
    voxels of a rejection (a quarter of the page's particle diameter, :func:`~cryopick.app.pagestate.near_vox`)."""
    rejections = data.get("rejected", [])
    kept = visible(data["coords"], data["scores"], rejections, threshold, 0.0, near)
    rejected = [list(c) for c in data["coords"] if any(math.dist(c, r) <= near for r in rejections)]
    shown = {tuple(c) for c in kept} | {tuple(c) for c in rejected}
    return kept, rejected, [list(c) for c in data["coords"] if tuple(c) not in shown]


def check_threshold(value, key: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{key} must be a number between 0 and 1, got {str(value)[:40]}")
    return float(value)


def thresholds_from(body: dict) -> tuple[float, dict[str, float]]:
    """``threshold`` (default for every class) and ``thresholds`` (per class) of a request body."""
    default = check_threshold(body.get("threshold", 0.0))
    per = body.get("thresholds") or {}
    if not isinstance(per, dict) or len(per) > 1000:
        raise ValueError("thresholds must be an object {class: threshold}")
    return default, {str(k): check_threshold(v, f"thresholds[{str(k)[:40]!r}]") for k, v in per.items()}


def reviewed3d(project) -> dict:
    """``{tomogram: {class: {"accepted", "rejected", "threshold"}}}`` of the accepts so far."""
    data = _read_json(project.root / "picks3d" / "reviewed.json")
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def accept3d(project, name: str, path, label: str, threshold, picks: dict, near: float, shown) -> dict:
    """Write the reviewed picks of class ``label`` in tomogram ``name`` (file ``path``; ``picks``: its picks
    per class, :func:`cryopick.app.tomo.picks3d`; ``near``: the rejection radius in voxels) as answers (see
    the module). ``shown``: the picks the page shows for the class; when they are not the ones the server
    keeps at ``threshold``, nothing is written (:func:`cryopick.app.review.check_shown`, HTTP 409)."""
    import pandas as pd

    from cryopick.picker3d.answers import Answers
    from cryopick.picker3d.prompt import check_label

    check_label(label)
    threshold = check_threshold(threshold)
    with project.lock:
        data = picks.get(label)
        if not data or not data["coords"]:
            raise ValueError(f"no {label!r} picks in {name} to accept: run Pick 3D first")
        kept, rejected, _ = split(data, threshold, near)
        check_shown(shown, kept, f"{label} picks of {name} at threshold {threshold:.2f}")
        rows = [{"tomogram": name, "label": label, "x": c[0], "y": c[1], "z": c[2], "answer": answer,
                 "path": str(path)} for cs, answer in ((kept, "yes"), (rejected, "no")) for c in cs]
        out = answers_path(project)
        out.parent.mkdir(exist_ok=True)
        project.confined(out.parent)
        old = Answers.read(out).table if out.is_file() else Answers().table
        old = old[~((old["tomogram"] == name) & (old["label"] == label))]
        Answers(pd.concat([old, pd.DataFrame(rows)], ignore_index=True)).write(out)
        record = reviewed3d(project)
        record.setdefault(name, {})[label] = {"accepted": len(kept), "rejected": len(rejected),
                                              "threshold": round(threshold, 4)}
        (project.root / "picks3d").mkdir(exist_ok=True)
        write_text(project.root / "picks3d" / "reviewed.json", dumps(record, indent=1) + "\n")
    return {"accepted": len(kept), "rejected": len(rejected), "answers": str(out.relative_to(project.root)),
            "reviewed": record[name]}


def has_answers(project) -> bool:
    """Whether ``answers3d/answers.csv`` holds an answered row."""
    from cryopick.picker3d.answers import Answers

    path = answers_path(project)
    return path.is_file() and len(Answers.read(path).answered()) > 0
