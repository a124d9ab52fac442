"""The ASGI application of ``cryopick app`` (Starlette): JSON API, server-sent job progress, static page.

Every route answers a JSON ``{"error": "..."}`` with a 4xx status for a bad request and never a
traceback (an unexpected failure is a 500 with a one-line message; the traceback goes to the log).
Micrographs are addressed by name (``[A-Za-z0-9_-...]``, never a path); every file the server touches
is resolved inside the project folder (:meth:`Project.confined`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cryopick.app.endpoint import BadRequest, api, number
from cryopick.app.images import image_info, render, render_region, render_tile
from cryopick.app.jobs import JobManager
from cryopick.app.project import Project, check_name
from cryopick.app.review import accept, counts, filter_rows, reviewed_picks, summary
from cryopick.app.security import Guard
from cryopick.app.tomo import routes as tomo_routes

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
EXPORT_FORMATS = {"relion": "relion", "cryosparc": "relion", "cryolo": "cryolo", "topaz": "topaz",
                  "cryoppp": "cryoppp"}


# -- endpoints (sync, run in the thread pool) --------------------------------------------------------
def get_project(state, params, query, body):
    p: Project = state.project
    return {"root": str(p.root), "micrograph_dir": str(p.micrograph_dir), "settings": p.settings(),
            "model": p.model_card(), "job": state.jobs.status()}


def put_settings(state, params, query, body):
    diameter = number(body, "diameter")
    if diameter is None or not 2 <= diameter <= 5000:
        raise BadRequest("diameter must be a number of pixels between 2 and 5000")
    return state.project.set_settings(diameter)


def list_micrographs(state, params, query, body):
    rows = summary(state.project)
    return {"micrographs": filter_rows(rows, query.get("status")), "counts": counts(rows)}


def micrograph_info(state, params, query, body):
    name = check_name(params["name"])
    info = image_info(state.project.micrograph(name), state.project.app_dir / "cache")
    return {"name": name, **info, "flag": state.project.flags().get(name)}


def micrograph_image(state, params, query, body):
    kind = query.get("kind", "display")
    if kind not in ("display", "thumb"):
        raise BadRequest("kind must be display or thumb")
    path = state.project.micrograph(check_name(params["name"]))
    png = render(path, state.project.app_dir / "cache", kind)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def micrograph_region(state, params, query, body):
    path = state.project.micrograph(check_name(params["name"]))
    try:
        box = [int(query[k]) for k in ("x0", "y0", "x1", "y1")]
    except (KeyError, ValueError):
        raise BadRequest("give the region as whole pixel numbers x0, y0, x1, y1") from None
    png = render_region(path, *box)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def micrograph_tile(state, params, query, body):
    path = state.project.micrograph(check_name(params["name"]))
    try:
        level, tx, ty = (int(query[k]) for k in ("level", "x", "y"))
    except (KeyError, ValueError):
        raise BadRequest("give the tile as whole numbers level, x, y") from None
    png = render_tile(path, state.project.app_dir / "cache", level, tx, ty)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


def get_annotations(state, params, query, body):
    return state.project.annotations(_existing(state, params["name"]))


def put_annotations(state, params, query, body):
    name = _existing(state, params["name"])
    if "version" not in body or "coords" not in body:
        raise BadRequest("send {\"version\": ..., \"coords\": [[x, y], ...]}")
    if not isinstance(body["version"], str):
        raise BadRequest("version must be the string returned by the last read")
    return state.project.save_annotations(name, body["coords"], body["version"])


def accept_picks(state, params, query, body):
    name = _existing(state, params["name"])
    return accept(state.project, name, body.get("threshold"), body.get("min_distance", 0.0), body.get("version"),
                  body.get("shown"))


def put_flag(state, params, query, body):
    name = _existing(state, params["name"])
    return {"flags": state.project.set_flag(name, body.get("flag"))}


def get_picks(state, params, query, body):
    return state.project.picks(_existing(state, params["name"]))


def start_job(state, params, query, body):
    kind = body.get("kind")
    if kind not in ("train", "pick", "pick3d"):
        raise BadRequest("kind must be train, pick or pick3d")
    opts = body.get("params") or {}
    if not isinstance(opts, dict):
        raise BadRequest("params must be an object")
    clean = {}
    for key in ("epochs", "steps_per_epoch", "patience", "patch_size", "batch_size"):
        if opts.get(key) is not None:
            clean[key] = number(opts, key, integer=True)
    for key in ("max_minutes", "particles_per_micrograph"):
        if opts.get(key) is not None:
            clean[key] = number(opts, key)
    if opts.get("answers") is not None:
        if kind != "pick3d" or not isinstance(opts["answers"], bool):
            raise BadRequest("answers (true or false) is an option of pick3d")
        from cryopick.app.review3d import has_answers

        if opts["answers"] and not has_answers(state.project):
            raise BadRequest("no reviewed tomogram picks yet: accept the picks of a class first")
        clean["answers"] = opts["answers"]
    if opts.get("names") is not None:
        names = opts["names"]
        if not isinstance(names, list) or len(names) > 100000:
            raise BadRequest("names must be a list of micrograph names")
        clean["names"] = [_existing(state, n) for n in names]
    return state.jobs.start(kind, clean)


def reject_pick(state, params, query, body):
    name = _existing(state, params["name"])
    if not isinstance(body.get("undo", False), bool):
        raise BadRequest("undo must be true or false")
    return {"rejected": state.project.reject(name, body.get("xy"), undo=body.get("undo", False))}


def suggestions(state, params, query, body):
    return state.project.suggestions()


def job_status(state, params, query, body):
    return state.jobs.status()


def cancel_job(state, params, query, body):
    return state.jobs.cancel()


def export(state, params, query, body):
    from cryopick.io.coords import write_picks
    from cryopick.picks import Picks, concat

    fmt = body.get("format", "relion")
    if fmt not in EXPORT_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    source = body.get("source", "annotations")
    p: Project = state.project
    if source == "annotations":
        picks = p.all_annotations()
    elif source == "picks":
        threshold = number(body, "threshold", p.threshold() or 0.5)
        min_distance = number(body, "min_distance", 0.0)
        if not 0 <= threshold <= 1 or not 0 <= min_distance <= 10:
            raise BadRequest("threshold must be between 0 and 1, min_distance between 0 and 10 (diameters)")
        tables = []
        for name in p.micrographs():
            keep, scores = reviewed_picks(p, name, threshold, min_distance)
            if keep:
                tables.append(Picks.from_arrays(name, keep, score=[float("nan") if v is None else v for v in scores],
                                                diameter=p.settings()["diameter"]))
        picks = concat(tables) if tables else Picks.empty()
    else:
        raise BadRequest("source must be annotations or picks")
    if not len(picks):
        raise BadRequest(f"nothing to export: no {source} yet")
    out = p.export_dir / f"{source}-{fmt}"
    p.export_dir.mkdir(parents=True, exist_ok=True)
    p.confined(p.export_dir)
    paths = {n: str(path.relative_to(p.root)) for n, path in p.micrographs().items()}
    if fmt == "cryosparc":  # one particles STAR that cryoSPARC's Import Particles reads
        files = write_picks(picks, out.with_suffix(".star"), format="relion", per_micrograph=False,
                            micrograph_paths=paths)
    else:
        # both columns of the RELION index relative to the project, whatever folder the server started in
        opts = {"micrograph_paths": paths, "project_dir": p.root} if fmt == "relion" else {}
        files = write_picks(picks, out, format=EXPORT_FORMATS[fmt], **opts)
    return {"files": [str(Path(f).relative_to(p.root)) for f in files], "n": len(picks)}


def _existing(state, name: str) -> str:
    check_name(name)
    state.project.micrograph(name)  # KeyError -> 404 when it is not a micrograph of the project
    return name


async def job_stream(request):
    """Server-sent events: the job's status every half second while it runs, then once more."""
    jobs: JobManager = request.app.state.jobs

    async def events():
        last = None
        while True:
            status = await run_in_threadpool(jobs.status)
            text = json.dumps(status)
            if text != last:
                yield f"data: {text}\n\n"
                last = text
            if status.get("state") != "running" or await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def index(request):
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def tomo_page(request):
    return FileResponse(STATIC / "tomo.html", headers={"Cache-Control": "no-cache"})


async def http_error(request, exc: HTTPException):
    return JSONResponse({"error": exc.detail or "error"}, status_code=exc.status_code)


async def server_error(request, exc: Exception):
    log.error("internal error in %s: %s", request.url.path, exc)
    return JSONResponse({"error": "internal error; see the server log"}, status_code=500)


def create_app(project_dir: str | Path, token: str | None = None, allowed_hosts: set[str] | None = None):
    """The ASGI app for ``project_dir``; ``token`` (if given) is required on every request."""
    project = Project(project_dir)
    m = "/api/micrographs/{name}"
    routes = [
        Route("/", index),
        Route("/api/project", api(get_project)),
        Route("/api/settings", api(put_settings), methods=["PUT"]),
        Route("/api/micrographs", api(list_micrographs)),
        Route(m, api(micrograph_info)),
        Route(m + "/image", api(micrograph_image)),
        Route(m + "/region", api(micrograph_region)),
        Route(m + "/tile", api(micrograph_tile)),
        Route(m + "/annotations", api(get_annotations)),
        Route(m + "/annotations", api(put_annotations), methods=["PUT"]),
        Route(m + "/flag", api(put_flag), methods=["PUT"]),
        Route(m + "/picks", api(get_picks)),
        Route(m + "/reject", api(reject_pick), methods=["POST"]),
        Route(m + "/accept", api(accept_picks), methods=["POST"]),
        Route("/api/suggestions", api(suggestions)),
        Route("/api/jobs", api(start_job), methods=["POST"]),
        Route("/api/jobs/current", api(job_status)),
        Route("/api/jobs/cancel", api(cancel_job), methods=["POST"]),
        Route("/api/jobs/stream", job_stream),
        Route("/api/export", api(export), methods=["POST"]),
        Route("/tomograms", tomo_page),
        *tomo_routes(),
        Mount("/static", StaticFiles(directory=STATIC, follow_symlink=False)),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.project = project
    app.state.jobs = JobManager(project)
    return Guard(app, token=token, allowed_hosts=allowed_hosts)
