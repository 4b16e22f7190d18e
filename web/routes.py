"""REST routes and the page. Issue 5 grows this into the full API; here: the page, health, cameras, latest."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from traffic_celery import names, results
from traffic_celery.metrics import assessment_stats, key_stats

from .runtime import runtime

bp = Blueprint("routes", __name__)


@bp.get("/")
def index():
    return send_from_directory(current_app.static_folder, "index.html")


@bp.get("/api/health")
def health():
    rt = runtime(current_app)
    cameras_registered = None
    try:
        redis_ok = bool(rt.redis.ping())
        cameras_registered = len(rt.cameras.all())
        error = None
    except redis.RedisError as exc:
        redis_ok, error = False, f"Redis unreachable ({exc}); check TC_REDIS_URL"
    body = {"status": "ok" if redis_ok else "degraded", "redis": redis_ok, "eventRelay": rt.hub.ready.is_set(),
            "cameras": cameras_registered, "captureNode": rt.node.node_id if rt.node else None,
            "capturing": sorted(rt.node.loops()) if rt.node else [], "websocketClients": rt.hub.client_count}
    if error:
        body["error"] = error
    return jsonify(body), 200 if redis_ok else 503


@bp.get("/api/cameras")
def cameras():
    rt = runtime(current_app)
    try:
        return jsonify(rt.cameras.describe())
    except redis.RedisError as exc:
        return jsonify(error=f"Redis unreachable ({exc}); check TC_REDIS_URL"), 503


@bp.get("/api/cameras/<camera_id>/latest")
def latest(camera_id: str):
    if not names.CAMERA_ID_RE.match(camera_id):
        return jsonify(error="cameraId must be letters, digits, '-' or '_'", field="cameraId"), 400
    found = results.latest_assessment(runtime(current_app).redis, camera_id)
    if found is None:
        return jsonify(error=f"no assessment for camera {camera_id} yet", field="cameraId"), 404
    return jsonify(found)


@bp.get("/api/keys")
def keys():
    rt = runtime(current_app)
    try:
        return jsonify(key_stats(rt.keys, rt.router.limiter, rt.router))
    except redis.RedisError as exc:
        return jsonify(error=f"Redis unreachable ({exc}); check TC_REDIS_URL"), 503


@bp.get("/api/assessments/stats")
def assessments_stats():
    """LLM calls made per reason and calls saved by the scheduler, all cameras."""
    try:
        return jsonify(assessment_stats(runtime(current_app).redis))
    except redis.RedisError as exc:
        return jsonify(error=f"Redis unreachable ({exc}); check TC_REDIS_URL"), 503


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(runtime(current_app).metrics), mimetype=CONTENT_TYPE_LATEST)
