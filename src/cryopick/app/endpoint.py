"""JSON endpoints of ``cryopick app``: a wrapper that maps every failure to a 4xx (or a bare 500) JSON reply."""

from __future__ import annotations

import json
import logging
import math

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from cryopick.app.project import Busy, Conflict
from cryopick.errors import CryopickError

log = logging.getLogger(__name__)
LIMITS = {"epochs": (1, 1000), "steps_per_epoch": (1, 10000), "max_minutes": (0.05, 24 * 60), "patience": (1, 1000),
          "patch_size": (32, 1024), "batch_size": (1, 64), "particles_per_micrograph": (0.1, 1e6)}


class BadRequest(Exception):
    status = 400


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def number(body: dict, key: str, default=None, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{key} must be a finite number, got {str(value)[:40]!r}")
    lo, hi = LIMITS.get(key, (-math.inf, math.inf))
    if not lo <= value <= hi:
        raise BadRequest(f"{key} must be between {lo:g} and {hi:g}, got {value}")
    if integer and not float(value).is_integer():
        raise BadRequest(f"{key} must be a whole number, got {value}")
    return int(value) if integer else float(value)


def api(fn):
    """Wrap ``fn(app_state, params, query, body)`` (sync, run in a thread) into a JSON endpoint."""

    async def endpoint(request):
        try:
            body = None
            if request.method in ("POST", "PUT"):
                raw = await request.body()
                try:
                    body = json.loads(raw or b"{}", parse_constant=_reject_constant)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise BadRequest(f"malformed JSON body ({str(exc)[:80]})") from None
                if not isinstance(body, dict):
                    raise BadRequest("the JSON body must be an object")
            result = await run_in_threadpool(fn, request.app.state, dict(request.path_params),
                                             dict(request.query_params), body)
        except Conflict as exc:
            return JSONResponse({"error": str(exc), "current": exc.current}, status_code=409)
        except Busy as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (ValueError, CryopickError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except PermissionError as exc:
            return JSONResponse({"error": f"refused: {exc}"}, status_code=403)
        except KeyError as exc:
            return JSONResponse({"error": f"no such micrograph: {str(exc.args[0])[:80]!r}"}, status_code=404)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the browser
            log.exception("internal error in %s", request.url.path)
            return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"},
                                status_code=500)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint
