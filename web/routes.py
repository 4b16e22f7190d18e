"""The page, health, keys, assessment stats and metrics. Cameras are in `cameras_api.py`."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from traffic_celery.telemetry.collectors import assessment_stats, key_stats

from .runtime import runtime

bp = Blueprint("routes", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    assert current_app.static_folder is not None  # the app is built with a static folder
    return send_from_directory(current_app.static_folder, "index.html")


@bp.get("/api/health")
def health() -> ResponseReturnValue:
    rt = runtime(current_app)
    cameras_registered = None
    try:
        redis_ok = bool(rt.redis.ping())
        cameras_registered = rt.cameras.count()
        error = None
    except redis.RedisError as exc:
        redis_ok, error = False, f"Redis unreachable ({exc}); check TC_REDIS_URL"
    deep = rt.health.check()
    healthy = redis_ok and all(part["ok"] for part in deep.values())
    body = {"status": "ok" if healthy else "degraded", "redis": redis_ok, **deep,
            "eventRelay": rt.hub.ready.is_set(), "cameras": cameras_registered,
            "captureNode": rt.node.node_id if rt.node else None,
            "capturing": sorted(rt.node.loops()) if rt.node else [], "websocketClients": rt.hub.client_count}
    if error:
        body["error"] = error
    return jsonify(body), 200 if redis_ok else 503


@bp.get("/api/keys")
def keys() -> ResponseReturnValue:
    rt = runtime(current_app)
    try:
        return jsonify(key_stats(rt.keys, rt.router.limiter, rt.router))
    except redis.RedisError as exc:
        return jsonify(error=f"Redis unreachable ({exc}); check TC_REDIS_URL"), 503


@bp.get("/api/assessments/stats")
def assessments_stats() -> ResponseReturnValue:
    """LLM calls made per reason and calls saved by the scheduler, all cameras."""
    try:
        return jsonify(assessment_stats(runtime(current_app).redis))
    except redis.RedisError as exc:
        return jsonify(error=f"Redis unreachable ({exc}); check TC_REDIS_URL"), 503


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    return Response(generate_latest(runtime(current_app).metrics), mimetype=CONTENT_TYPE_LATEST)
