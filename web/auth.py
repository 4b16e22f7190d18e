"""Token auth for REST and the WebSocket, and the loopback-only rule without a token.

With `TC_API_TOKEN` set, every `/api/...` route, `/metrics` and `/ws` need it: `Authorization: Bearer <token>` (or,
where a browser cannot set a header, `?token=<token>`, which is how the page opens the WebSocket). `/`, the static
files and `/api/health` stay open (a load balancer probes health; the page asks for the token). Tokens are
compared in constant time and never logged.

Without a token the web tier must not be reachable from other machines: :func:`bind_address` turns a
non-loopback `TC_WEB_HOST` into 127.0.0.1 and says so at start.
"""

from __future__ import annotations

import hmac
import logging
from typing import Optional

from flask import Flask, jsonify, request

from traffic_celery.net import is_loopback
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/api/health",)


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


def presented_token() -> Optional[str]:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.args.get("token")


def install(app: Flask, settings: Settings) -> None:
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()

    @app.before_request
    def require_token():
        path = request.path
        guarded = (path.startswith("/api/") and path not in OPEN_PATHS) or path in ("/metrics", "/ws")
        if not guarded:
            return None
        token = presented_token()
        if token is not None and hmac.compare_digest(token.encode(), expected):
            return None
        message = "missing token: send 'Authorization: Bearer <TC_API_TOKEN>' (or ?token= for the WebSocket)" \
            if token is None else "wrong token"
        return jsonify(error=message, field="token"), 401, {"WWW-Authenticate": "Bearer"}
