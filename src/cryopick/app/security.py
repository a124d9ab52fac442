"""Request guards of ``cryopick app``: access token, allowed hosts, JSON-only writes, bounded bodies.

A pure ASGI middleware, so every route (static files too) goes through it. Refusals are 4xx JSON
``{"error": "..."}`` responses.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

MAX_BODY = 1 << 20  # bytes of one request body (20000 coordinate pairs fit easily)
COOKIE = "cryopick_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: host check, token check, body limit, JSON content type for writes.

    Parameters
    ----------
    token
        The access token (``None``: no token is checked).
    allowed_hosts
        Host header names accepted (``None``: any); guards a loopback server against DNS rebinding.
    """

    def __init__(self, app, token: str | None = None, allowed_hosts: set[str] | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.app, self.token, self.allowed_hosts, self.max_body = app, token, allowed_hosts, max_body

    def _token_ok(self, scope) -> tuple[bool, bool]:
        """(token valid, token came in the query string)."""
        if self.token is None:
            return True, False
        given = []
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = "token" in query
        given += query.get("token", [])
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                text = value.decode("latin-1")
                if text.lower().startswith("token "):
                    given.append(text[6:].strip())
            elif name == b"cookie":
                cookie = SimpleCookie()
                try:
                    cookie.load(value.decode("latin-1"))
                except Exception:  # noqa: BLE001 - a malformed cookie header is no token
                    continue
                if COOKIE in cookie:
                    given.append(cookie[COOKIE].value)
        ok = any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)
        return ok, from_query and ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if self.allowed_hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in self.allowed_hosts:
                return await send_json(send, 403, {"error": f"host {host!r} not allowed; open the URL printed by "
                                                            "cryopick app"})
        ok, from_query = self._token_ok(scope)
        if not ok:
            return await send_json(send, 403, {"error": "missing or wrong access token; open the URL printed by "
                                                        "`cryopick app` (it carries ?token=...)"})
        method = scope.get("method", "GET")
        receive_body = receive
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                return await send_json(send, 415, {"error": "send the request body as JSON "
                                                            "(Content-Type: application/json)"})
            length = headers.get(b"content-length")
            try:
                declared = int(length) if length is not None else None
            except ValueError:
                return await send_json(send, 400, {"error": "bad Content-Length header"})
            if declared is not None and declared > self.max_body:
                return await send_json(send, 413, {"error": f"request body too large ({declared} bytes; at most "
                                                            f"{self.max_body})"})
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body:
                    return await send_json(send, 413, {"error": f"request body too large (at most {self.max_body} "
                                                                "bytes)"})
            sent = False

            async def receive_body():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

        if from_query and self.token is not None:
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()

            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
                await send(message)

            return await self.app(scope, receive_body, send_with_cookie)
        return await self.app(scope, receive_body, send)
