"""``cryopick app``: annotate, train, pick and review in a browser tab, with the project folder on disk.

>>> from cryopick.app import serve
>>> serve("my_project", port=8765, open_browser=False)   # blocks; Ctrl-C stops

A top layer: it uses the library (io, picker2d) and nothing imports it. Starlette + uvicorn are the
optional extra ``cryopick[app]``.
"""

from __future__ import annotations

import secrets
import socket
import sys
from pathlib import Path

from cryopick.errors import CryopickError

__all__ = ["create_app", "serve", "url_for"]


def create_app(project_dir, token=None, allowed_hosts=None):
    """The ASGI app (see :func:`cryopick.app.server.create_app`)."""
    from cryopick.app.server import create_app as _create

    return _create(project_dir, token=token, allowed_hosts=allowed_hosts)


def url_for(host: str, port: int, token: str | None) -> str:
    shown = "localhost" if host in ("127.0.0.1", "localhost", "::1") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _free_port(host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or "not a valid port"
            raise CryopickError(f"--port {port}: cannot listen on {host}:{port} ({reason}); "
                                "choose another port (0 = any free one)") from None
        return s.getsockname()[1]


def serve(project_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True,
          token: str | None = None) -> None:
    """Start the web app for ``project_dir`` (created if missing) and block until interrupted.

    Listens on 127.0.0.1 unless ``host`` says otherwise; any other host requires the access token that
    the printed URL carries (on loopback the Host header must name this machine, against DNS rebinding).
    """
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise CryopickError("the app needs Starlette and uvicorn: pip install 'cryopick[app]'") from None
    from cryopick.app.security import LOOPBACK_NAMES, is_loopback

    loopback = is_loopback(host)
    if not loopback:
        token = token or secrets.token_urlsafe(24)
    allowed = LOOPBACK_NAMES if loopback else None
    app = create_app(project_dir, token=token, allowed_hosts=allowed)
    port = _free_port(host, port)
    url = url_for(host, port, token)
    print(f"cryopick app: serving {Path(project_dir).resolve()}\n    {url}\n"
          + ("" if loopback else "    (listening beyond this machine: the token in the URL is required)\n")
          + "Press Ctrl-C to stop.", file=sys.stderr, flush=True)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
