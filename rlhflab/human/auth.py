"""Who may talk to the app.

On 127.0.0.1 (the default) only this machine can connect; the Host header must name a
loopback address, so a web page elsewhere cannot reach the app through DNS rebinding. Bound to
any other address the app needs an access token on every request: `?token=...` once (the
app answers with a cookie and a redirect that drops the token from the address bar), then the
cookie, or an `Authorization: Bearer ...` / `X-Rlhflab-Token` header for scripts. POSTs must
be JSON, which a cross-site form cannot send.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

TOKEN_ENV = "RLHFLAB_TOKEN"
COOKIE = "rlhflab_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The page loads only its own script and style; model text can never run as code even if it
# were rendered as HTML somewhere by mistake.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK


def resolve_token(host: str, token: str | None) -> str | None:
    """The token the server enforces: --token, else $RLHFLAB_TOKEN, else (off loopback) a new one."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    return token


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):  # [::1]:8000
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _presented(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-rlhflab-token") or request.cookies.get(COOKIE)


def guard(token: str | None, allowed_hosts: tuple[str, ...] | None):
    """An HTTP middleware enforcing the rules above; `allowed_hosts` None allows any Host."""

    async def middleware(request: Request, call_next) -> Response:
        if allowed_hosts is not None and _host_name(request) not in allowed_hosts:
            return PlainTextResponse("Unknown Host header: open the app at the address it printed.", status_code=400)
        if token is not None:
            query = request.query_params.get("token")
            if query is not None and secrets.compare_digest(query.encode(), token.encode()):
                if request.method == "GET" and not request.url.path.startswith("/api/"):
                    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                    target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                    response: Response = RedirectResponse(target, status_code=303)
                    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
                    return _secured(response)
            else:
                presented = _presented(request)
                if presented is None or not secrets.compare_digest(presented.encode(), token.encode()):
                    message = "This rlhflab server needs its access token: open the address it printed at start (ending in ?token=...)."
                    if request.url.path.startswith("/api/"):
                        return _secured(JSONResponse({"detail": message}, status_code=401))
                    return _secured(PlainTextResponse(message, status_code=401))
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _secured(JSONResponse({"detail": "Send answers as JSON (Content-Type: application/json)."}, status_code=415))
        return _secured(await call_next(request))

    return middleware


def _secured(response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response
