"""Tomograms in ``cryopick app``: slices for display, clicked prompts per class, and the picks of ``pick3d``.

Layout inside the project::

    PROJECT/tomograms/<name>.mrc                   the tomograms (MRC; opened in place)
    PROJECT/prompts/prompts.json                   per class: the tomogram and the clicked centres (x, y, z voxels)
    PROJECT/prompts/<class>.prompt                 the prompt files `cryopick pick3d` reads (made by the job)
    PROJECT/picks3d/                               `cryopick pick3d` output: relion5/, relion4/, copick/
    PROJECT/answers3d/answers.csv                  reviewed picks as answers (:mod:`cryopick.app.review3d`)
    PROJECT/app.json ("tomogram_page")             the page's state (:mod:`cryopick.app.pagestate`)
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from cryopick.app.endpoint import BadRequest, api
from cryopick.app.pagestate import near_vox, page_state, set_page_state
from cryopick.app.project import _read_json, check_name
from cryopick.app.review3d import accept3d, reviewed3d, split, thresholds_from
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps

AXES = {"z": 0, "y": 1, "x": 2}
MAX_SLAB = 32
MAX_PROMPT_POSITIONS = 50
MAX_REJECTED = 20000
FORMATS_3D = ("relion5", "relion4", "copick")


def tomograms(project) -> dict[str, Path]:
    from cryopick.io.images import MRC_SUFFIXES

    folder = project.root / "tomograms"
    if not folder.is_dir():
        return {}
    project.confined(folder)
    return project.named_files(folder.iterdir(), lambda p: not p.name.startswith(".") and p.is_file()
                               and p.suffix.lower() in MRC_SUFFIXES)


def tomogram(project, name: str) -> Path:
    check_name(name)
    path = tomograms(project).get(name)
    if path is None:
        raise KeyError(name)
    return path


def _read(path: Path):
    from cryopick.io.images import read_tomogram

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_tomogram(path)


def render_slice(path: Path, axis: str, index: int, slab: int) -> bytes:
    """PNG of the mean of ``2 slab + 1`` sections around ``index`` across ``axis`` (display contrast only)."""
    from cryopick.app.images import DISPLAY_SIDE, _downsample, _png

    data = _read(path).data
    if data.ndim != 3:
        raise ValueError(f"{path.name} is not a 3D volume")
    a = AXES[axis]
    n = data.shape[a]
    if not 0 <= index < n:
        raise ValueError(f"index must be between 0 and {n - 1} along {axis}, got {index}")
    sl = [slice(None)] * 3
    sl[a] = slice(max(0, index - slab), min(n, index + slab + 1))
    section = np.asarray(data[tuple(sl)], dtype=np.float32).mean(axis=a)
    return _png(_downsample(section, DISPLAY_SIDE))


def prompts(project) -> dict:
    data = _read_json(project.root / "prompts" / "prompts.json")
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("positions"), list)}


def edit_prompt(project, name: str, label: str, xyz, remove: bool = False, diameter: float | None = None) -> dict:
    """Add the clicked centre ``xyz`` to class ``label`` (from tomogram ``name``), or remove the one near it.
    ``diameter``: the particle diameter in voxels of the tomogram as stored (the page's diameter field),
    kept with the class and given to its prompt (else the prompt estimates it)."""
    from cryopick.picker3d.prompt import check_label

    check_label(label)
    _check_xyz(xyz)
    shape = _read(tomogram(project, name)).data.shape  # (z, y, x)
    if not all(0 <= v <= s - 1 for v, s in zip(xyz, shape[::-1])):
        raise ValueError(f"xyz {xyz} is outside the tomogram (x < {shape[2]}, y < {shape[1]}, z < {shape[0]})")
    with project.lock:
        data = prompts(project)
        entry = data.get(label, {"tomogram": name, "positions": []})
        if entry["tomogram"] != name:
            raise ValueError(f"the examples of class {label!r} come from tomogram {entry['tomogram']!r}; "
                             "give this class another name")
        pos = [p for p in entry["positions"] if not (remove and np.linalg.norm(np.subtract(p, xyz)) <= 4)]
        if not remove:
            if len(pos) >= MAX_PROMPT_POSITIONS:
                raise ValueError(f"at most {MAX_PROMPT_POSITIONS} examples per class")
            pos.append([round(float(v), 2) for v in xyz])
        entry["positions"] = pos
        if diameter is not None and not remove:
            entry["diameter"] = round(float(diameter), 2)
        if pos:
            data[label] = entry
        else:
            data.pop(label, None)
        (project.root / "prompts").mkdir(exist_ok=True)
        project.confined(project.root / "prompts")
        write_text(project.root / "prompts" / "prompts.json", dumps(data, indent=1) + "\n")
    return data


def picks3d(project, name: str) -> dict:
    """Per class: the picks of ``name`` (x, y, z voxels) and their scores, from ``picks3d/relion4/`` (bin-1
    pixels = voxels: the project's tomograms are picked as stored), or ``relion3/`` of earlier versions."""
    from cryopick.io.coords import read_picks

    check_name(name)
    out = {}
    folder = project.root / "picks3d" / "relion4"
    if not folder.is_dir():
        folder = project.root / "picks3d" / "relion3"
    if not folder.is_dir():
        return out
    project.confined(folder)
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        path = label_dir / f"{name}.star"
        if not path.is_file():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = read_picks(path, format="relion", diameter=0.0)
        scores = p.table["score"].to_numpy(float)
        out[label_dir.name] = {"coords": p.coords.tolist(),
                               "scores": [float(s) if np.isfinite(s) else None for s in scores],
                               "rejected": rejected3d(project).get(name, {}).get(label_dir.name, [])}
    return out


def rejected3d(project) -> dict:
    """Picks rejected in review: ``{tomogram: {class: [[x, y, z], ...]}}`` (``picks3d/rejected.json``)."""
    data = _read_json(project.root / "picks3d" / "rejected.json")
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def near3d(project, path: Path) -> float:
    """The review's rejection radius in voxels of the tomogram at ``path``: a quarter of the page's diameter."""
    return near_vox(page_state(project), _read(path).pixel_size)


def reject3d(project, name: str, label: str, xyz, undo: bool = False) -> list:
    """Reject the pick of class ``label`` at ``xyz`` in tomogram ``name`` (or take that back: the rejections
    within the review's radius, :func:`near3d`, are removed)."""
    from cryopick.picker3d.prompt import check_label

    check_label(label)
    near = near3d(project, tomogram(project, name))
    _check_xyz(xyz)
    with project.lock:
        data = rejected3d(project)
        rows = [r for r in data.get(name, {}).get(label, []) if math.dist(r, xyz) > near]
        if not undo:
            rows.append([round(float(v), 2) for v in xyz])
        data.setdefault(name, {})[label] = rows[:MAX_REJECTED]
        (project.root / "picks3d").mkdir(exist_ok=True)
        project.confined(project.root / "picks3d")
        write_text(project.root / "picks3d" / "rejected.json", dumps(data) + "\n")
    return data[name][label]


def export3d(project, threshold: float, thresholds: dict[str, float] | None = None) -> dict:
    """Reviewed picks (score >= the class's threshold in ``thresholds``, else ``threshold``; rejected ones
    left out) of every tomogram and class, in RELION 5 (with ``autopick.star`` and ``tomograms.star``)
    and copick, under ``export/tomograms/``."""

    import pandas as pd

    from cryopick.picker3d.outputs import rebuild_indexes, write_tomogram_picks
    from cryopick.picks import Picks

    out = project.root / "export" / "tomograms"
    project.root.joinpath("export").mkdir(exist_ok=True)
    project.confined(project.root / "export")
    files, records, n = [], [], 0
    for name, path in tomograms(project).items():
        img = _read(path)
        near = near_vox(page_state(project), img.pixel_size)
        rows = []
        for label, data in picks3d(project, name).items():
            kept = split(data, (thresholds or {}).get(label, threshold), near)[0]
            score = {tuple(c): s for c, s in zip(data["coords"], data["scores"])}
            rows += [{"micrograph": name, "x": c[0], "y": c[1], "z": c[2], "score": score[tuple(c)], "label": label}
                     for c in kept]
        if not rows:
            continue
        table = pd.DataFrame(rows)
        picks = Picks(table.assign(diameter=np.nan), pixel_size=img.pixel_size, ndim=3)
        labels = list(dict.fromkeys(table["label"]))
        files += write_tomogram_picks(picks, out, ("relion5", "copick"), name, labels, img.data.shape)
        records.append({"tomogram": name, "path": str(path.relative_to(project.root)), "shape": list(img.data.shape),
                        "voxel_size": img.pixel_size})
        n += len(rows)
    if not records:
        raise ValueError("nothing to export: no tomogram picks at this threshold")
    labels = sorted({p.parent.name for p in files if p.suffix == ".star"})
    files += rebuild_indexes(out, records, labels, ("relion5",), project_dir=project.root)
    return {"files": [str(Path(f).relative_to(project.root)) for f in files], "n": n}


def _check_xyz(xyz) -> None:
    if (not isinstance(xyz, list) or len(xyz) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in xyz)):
        raise ValueError("xyz must be [x, y, z]: three finite numbers (voxels)")


# -- endpoints ----------------------------------------------------------------------------------------
def list_tomograms(state, params, query, body):
    from cryopick.errors import CryopickError

    rows, reviewed = [], reviewed3d(state.project)

    for name, path in tomograms(state.project).items():
        try:
            img = _read(path)
        except CryopickError as exc:  # listed with the reason, the others still open
            rows.append({"name": name, "error": str(exc)})
            continue
        if img.data.ndim != 3:
            rows.append({"name": name, "error": f"{path.name} is not a 3D volume"})
            continue
        rows.append({"name": name, "shape": list(img.data.shape), "voxel_size": img.pixel_size,
                     "picked": {label: len(d["coords"]) for label, d in picks3d(state.project, name).items()},
                     "reviewed": reviewed.get(name, {})})
    return {"tomograms": rows, "prompts": prompts(state.project), "page": page_state(state.project)}


def get_slice(state, params, query, body):
    from starlette.responses import Response

    axis = query.get("axis", "z")
    if axis not in AXES:
        raise BadRequest("axis must be x, y or z")
    try:
        index, slab = int(query.get("index", "0")), int(query.get("slab", "0"))
    except ValueError:
        raise BadRequest("index and slab must be whole numbers") from None
    if not 0 <= slab <= MAX_SLAB:
        raise BadRequest(f"slab must be between 0 and {MAX_SLAB}")
    png = render_slice(tomogram(state.project, params["name"]), axis, index, slab)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def post_prompt(state, params, query, body):
    label = body.get("label")
    if not isinstance(label, str):
        raise BadRequest("label must be the class name")
    if not isinstance(body.get("remove", False), bool):
        raise BadRequest("remove must be true or false")
    diameter = body.get("diameter")
    if diameter is not None and (isinstance(diameter, bool) or not isinstance(diameter, (int, float))
                                 or not math.isfinite(diameter) or diameter <= 0):
        raise BadRequest("diameter must be a number of voxels > 0")
    return {"prompts": edit_prompt(state.project, params["name"], label, body.get("xyz"), body.get("remove", False),
                                   diameter)}


def get_picks3d(state, params, query, body):
    tomogram(state.project, params["name"])
    return {"picks": picks3d(state.project, params["name"])}


def post_reject3d(state, params, query, body):
    if not isinstance(body.get("label"), str) or not isinstance(body.get("undo", False), bool):
        raise BadRequest("send {\"label\": class, \"xyz\": [x, y, z], \"undo\": false}")
    return {"rejected": reject3d(state.project, params["name"], body["label"], body.get("xyz"),
                                 body.get("undo", False))}


def post_export3d(state, params, query, body):
    return export3d(state.project, *thresholds_from(body))


def post_accept3d(state, params, query, body):
    """Accept the picks of a class as answers: the page sends the class, its threshold and the picks it shows
    (``shown``), and nothing is written when the server would keep others (a 409 saying both counts)."""
    if not isinstance(body.get("label"), str):
        raise BadRequest("send {\"label\": class, \"threshold\": 0..1, \"shown\": [[x, y, z], ...]}")
    name = params["name"]
    path = tomogram(state.project, name)
    with state.project.lock:
        out = accept3d(state.project, name, path, body["label"], body.get("threshold"), picks3d(state.project, name),
                       near3d(state.project, path), body.get("shown"))
        set_page_state(state.project, {"thresholds": {body["label"]: body["threshold"]}})
    return out


def get_page(state, params, query, body):
    return page_state(state.project)


def put_page(state, params, query, body):
    return set_page_state(state.project, body)


def routes():
    from starlette.routing import Route

    t = "/api/tomograms/{name}"
    return [Route("/api/tomograms", api(list_tomograms)), Route(t + "/slice", api(get_slice)),
            Route(t + "/prompts", api(post_prompt), methods=["POST"]), Route(t + "/picks", api(get_picks3d)),
            Route(t + "/reject", api(post_reject3d), methods=["POST"]),
            Route(t + "/accept", api(post_accept3d), methods=["POST"]),
            Route("/api/tomograms-export", api(post_export3d), methods=["POST"]),
            Route("/api/tomograms-page", api(get_page)), Route("/api/tomograms-page", api(put_page), methods=["PUT"])]
