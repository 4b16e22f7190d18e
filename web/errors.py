"""JSON errors for the whole API: `{"error": message, "field": name or null}` with the right status code.

Route code raises :class:`ApiError`; Flask's own errors (unknown route, wrong method, oversized body) and a dead
Redis get the same shape, so a client never has to parse an HTML error page.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from traffic_celery.registry import RegistryConflict

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def install(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> ResponseReturnValue:
        return jsonify(error=exc.message, field=exc.field), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        if not request.path.startswith("/api/"):
            return exc
        messages = {404: f"no route {request.path}; see /api/openapi.json",
                    405: f"{request.method} is not allowed on {request.path}",
                    413: f"the body is larger than {app.config.get('MAX_CONTENT_LENGTH')} bytes"}
        # Flask never passes a code-less HTTPException to a handler, so `or 500` only narrows the type
        return jsonify(error=messages.get(exc.code or 500, exc.description), field=None), exc.code or 500

    @app.errorhandler(RegistryConflict)
    def conflict(exc: RegistryConflict) -> ResponseReturnValue:
        return jsonify(error=str(exc), field="cameraId"), 409

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> ResponseReturnValue:
        logger.warning("Redis error on %s: %s", request.path, exc)
        return jsonify(error=f"Redis unreachable ({exc}); check TC_REDIS_URL", field=None), 503
