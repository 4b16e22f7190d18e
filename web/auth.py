"""Token auth for REST and the WebSocket, and the loopback-only rule without a token.

With `TC_API_TOKEN` set, every `/api/...` route, `/metrics` and `/ws` need one of:

- `Authorization: Bearer <token>`: scripts, Prometheus, non-browser WebSocket clients (websocket-client's
  `header=`);
- the session cookie `tc_session` that `POST /api/login {"token": ...}` sets (what the page uses, since a browser
  cannot put a header on a WebSocket handshake or an `<img>`). The cookie is HttpOnly, SameSite=Strict, Path=/,
  and its value is HMAC-SHA256(token, "tc-session-v1"), not the token: a leaked cookie does not give the token
  away (it is still a credential for this server until the token changes). `POST /api/logout` clears it.

A token in the URL (`?token=`) is refused with 401 whatever else the request carries: URLs end up in request
logs, proxy logs and browser history. `/`, the static files, `/api/health`, `/api/login` and `/api/logout` stay
open (a load balancer probes health; the page shows a login form when the API answers 401). Tokens and session
values are compared in constant time and never logged (traffic_celery.logs masks them anyway).

Cross-origin requests with the cookie: SameSite=Strict keeps the browser from sending the cookie from another
*site*, but another origin of the same site (another port on this host, a sibling subdomain) still gets it sent,
and WebSocket handshakes are not subject to CORS at all: a page there could open `/ws` with the user's cookie and
drive the cameras (cross-site WebSocket hijacking), or POST a text/plain body to the REST API. So a request
authenticated by the cookie whose `Origin` header (browsers send it on every WebSocket handshake and on every
non-GET fetch) names another host than the `Host` it was sent to is refused with 403. A request without `Origin`
(same-origin navigation, `<img>`, a non-browser client) is not a cross-origin browser request and passes. A reverse
proxy in front must pass the original `Host` header.

Without a token the web tier must not be reachable from other machines: :func:`bind_address` turns a
non-loopback `TC_WEB_HOST` into 127.0.0.1 and says so at start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from traffic_celery.net import is_loopback
from traffic_celery.settings import Settings

from .cameras_api import parse
from .runtime import runtime

logger = logging.getLogger(__name__)

COOKIE = "tc_session"
OPEN_PATHS = ("/api/health", "/api/login", "/api/logout")
URL_TOKEN_REFUSED = ("a token in the URL is refused (URLs end up in logs): send 'Authorization: Bearer "
                     "<TC_API_TOKEN>', or POST {\"token\": ...} to /api/login for a session cookie")

bp = Blueprint("auth", __name__)


class Login(BaseModel):
    """The token to exchange for a session cookie."""

    model_config = ConfigDict(extra="forbid")
    token: StrictStr = Field(min_length=1, max_length=4096, description="TC_API_TOKEN")


def bind_address(settings: Settings) -> str:
    """Where the web tier may listen: anywhere with a token, loopback only without one."""
    if settings.api_token is None and not is_loopback(settings.web_host):
        logger.warning("no TC_API_TOKEN: binding 127.0.0.1 instead of %s, so that nobody else can reach an "
                       "unauthenticated API; set TC_API_TOKEN to listen on %s", settings.web_host,
                       settings.web_host)
        return "127.0.0.1"
    if settings.api_token is None:
        logger.info("no TC_API_TOKEN: the API is open, and reachable from this machine only")
    return settings.web_host


def session_value(token: str) -> str:
    """The cookie value for a token: derived from it, so that the cookie does not reveal it."""
    return hmac.new(token.encode(), b"tc-session-v1", hashlib.sha256).hexdigest()


def _secret(settings: Settings) -> str | None:
    return None if settings.api_token is None else settings.api_token.get_secret_value()


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _same_origin() -> bool:
    """True without an Origin header, or when it names the host the request was sent to."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frame, file://) or garbage
    default = {"http": ":80", "https": ":443"}[parts.scheme]
    return parts.netloc.lower().removesuffix(default) == request.host.lower().removesuffix(default)


def _refuse(status: int, message: str) -> tuple[Response, int, dict[str, str]]:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return jsonify(error=message, field="token"), status, headers


@bp.post("/api/login")
def login() -> ResponseReturnValue:
    """Exchange the token for the session cookie: 204 and Set-Cookie, or 401."""
    body = parse(Login)
    expected = _secret(runtime(current_app).settings)
    response = Response(status=204)
    if expected is None:
        return response  # no TC_API_TOKEN: the API is open, there is nothing to log in to
    if not hmac.compare_digest(body.token.encode(), expected.encode()):
        return _refuse(401, "wrong token")
    response.set_cookie(COOKIE, session_value(expected), httponly=True, samesite="Strict", path="/",
                        secure=request.is_secure)
    return response


@bp.post("/api/logout")
def logout() -> ResponseReturnValue:
    """Clear the session cookie (204)."""
    response = Response(status=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return response


def install(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)  # always, so the routes (and the OpenAPI text) do not depend on the setting
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    expected_session = session_value(settings.api_token.get_secret_value()).encode()

    @app.before_request
    def require_token() -> ResponseReturnValue | None:
        path = request.path
        guarded = (path.startswith("/api/") and path not in OPEN_PATHS) or path in ("/metrics", "/ws")
        if not guarded:
            return None
        if "token" in request.args or "access_token" in request.args:
            return _refuse(401, URL_TOKEN_REFUSED)
        token = bearer_token()
        if token is not None:
            return None if hmac.compare_digest(token.encode(), expected) else _refuse(401, "wrong token")
        session = request.cookies.get(COOKIE)
        if session is not None:
            if not hmac.compare_digest(session.encode(), expected_session):
                return _refuse(401, "session expired or token changed: log in again (POST /api/login)")
            if not _same_origin():
                return _refuse(403, f"cross-origin request with the session cookie refused: Origin "
                               f"{request.headers.get('Origin', '')[:100]!r} is not {request.host!r}")
            return None
        return _refuse(401, "missing token: send 'Authorization: Bearer <TC_API_TOKEN>', or POST "
                       "{\"token\": ...} to /api/login for a session cookie (the page does)")
