"""The OpenAPI 3.1 description of the REST API, served at `/api/openapi.json`.

Request bodies come from the same pydantic models that validate them; a test checks that every `/api/` route of
the app is described here and nothing else, so the description cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

from traffic_celery.protocol import Incident
from traffic_celery.safety.calibration import Calibration

from .auth import COOKIE, OPEN_PATHS, Login
from .cameras_api import CameraChange, CameraCreate, ZonesBody

bp = Blueprint("openapi", __name__)

ERROR = {"$ref": "#/components/schemas/Error"}
CAMERA = {"$ref": "#/components/schemas/Camera"}
INCIDENT = {"$ref": "#/components/schemas/Incident"}
SECURITY = {"bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <TC_API_TOKEN>"},
            "session": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                        "description": "set by POST /api/login; refused from another origin"}}
ID = [{"name": "camera_id", "in": "path", "required": True, "schema": {"type": "string",
                                                                      "pattern": "^[A-Za-z0-9_-]{1,64}$"}}]

# (method, path, summary, request model, success status, success schema)
ROUTES: list[tuple[str, str, str, type[BaseModel] | None, int, dict[str, Any]]] = [
    ("get", "/api/health", "Redis, event relay, cameras, this process's capture node", None, 200, {}),
    ("get", "/api/keys", "API keys (masked), limits, state and counters", None, 200, {"type": "array"}),
    ("get", "/api/assessments/stats", "LLM calls made per reason and saved", None, 200, {}),
    ("get", "/api/cameras", "every camera with its state", None, 200, {"type": "array", "items": CAMERA}),
    ("post", "/api/cameras", "add a camera (started unless enabled is false)", CameraCreate, 201, CAMERA),
    ("get", "/api/cameras/{camera_id}", "one camera", None, 200, CAMERA),
    ("patch", "/api/cameras/{camera_id}", "change url, frameInterval, enabled or context", CameraChange, 200, CAMERA),
    ("delete", "/api/cameras/{camera_id}", "remove a camera", None, 204, {}),
    ("post", "/api/cameras/{camera_id}/start", "start a camera", None, 200, CAMERA),
    ("post", "/api/cameras/{camera_id}/stop", "stop a camera (it stays listed)", None, 200, CAMERA),
    ("get", "/api/cameras/{camera_id}/status", "state, message, node and counters", None, 200, {}),
    ("get", "/api/cameras/{camera_id}/latest", "the latest risk assessment", None, 200, {}),
    ("get", "/api/cameras/{camera_id}/alerts", "alert history, newest first; ?limit=1..100&before=<alertId>",
     None, 200, {"type": "object", "properties": {"items": {"type": "array"}, "next": {"type": ["string", "null"]}}}),
    ("get", "/api/cameras/{camera_id}/alerts/{task_id}/snapshot.jpg", "an alert's crop (image/jpeg)", None, 200,
     {}),
    ("put", "/api/cameras/{camera_id}/zones", "replace the camera's zones and masks (points: fractions of the "
     "frame)", ZonesBody, 200, CAMERA),
    ("put", "/api/cameras/{camera_id}/calibration", "calibrate to the ground: 4 image points (fractions of the "
     "frame) and their positions in metres", Calibration, 200, CAMERA),
    ("delete", "/api/cameras/{camera_id}/calibration", "forget the calibration (back to relative units)", None,
     200, CAMERA),
    ("get", "/api/incidents", "incidents, newest first; ?cameraId=&zone=&severity=<minimum>&since=&until=<epoch "
     "s>&limit=1..500&cursor=<next>", None, 200,
     {"type": "object", "properties": {"items": {"type": "array", "items": INCIDENT},
                                       "next": {"type": ["string", "null"]}}}),
    ("get", "/api/incidents/{incident_id}", "one incident with its metrics and verdicts", None, 200, INCIDENT),
    ("get", "/api/incidents/{incident_id}/snapshot", "the full frame at the incident's worst moment (image/jpeg)",
     None, 200, {}),
    ("get", "/api/incidents/{incident_id}/clip", "the incident's clip, from before it to after it (video/webm, "
     "VP8)", None, 200, {}),
    ("get", "/api/reports/counts", "incident counts per bucket and severity (each incident once: series) and per "
     "camera x zone x class x conflict type x severity (rows); ?bucket=15|60&cameraId=&since=&until=<epoch s or ISO "
     "8601; default the last 24 h>&format=json|csv&rows=1|0 (0: series only)", None, 200,
     {"type": "object", "properties": {"buckets": {"type": "array", "items": {"type": "integer"}},
                                       "series": {"type": "object"}, "rows": {"type": ["array", "null"]},
                                       "incidents": {"type": "integer"}}}),
    ("get", "/api/reports/heatmap/{camera_id}.png", "the camera's near-miss heat map over its latest snapshot "
     "(image/png); ?since=&until=", None, 200, {}),
    ("get", "/api/reports/ranking", "cameras and zones ranked by severity-weighted incidents (high 3, medium 2, "
     "low 1), with worst TTC/PET; ?since=&until=", None, 200,
     {"type": "object", "properties": {"cameras": {"type": "array"}, "zones": {"type": "array"}}}),
    ("get", "/api/reports/incidents.csv", "incidents as CSV, oldest first (text/csv); ?cameraId=&zone=&severity="
     "<minimum>&since=&until=", None, 200, {}),
    ("get", "/api/openapi.json", "this description", None, 200, {}),
    ("post", "/api/login", "exchange TC_API_TOKEN for the session cookie (204 + Set-Cookie tc_session; 401 if "
     "wrong)", Login, 204, {}),
    ("post", "/api/logout", "clear the session cookie", None, 204, {}),
]


def spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, model, status, schema in ROUTES:
        params = list(ID) if "{camera_id}" in path else []
        if "{incident_id}" in path:
            params.append({"name": "incident_id", "in": "path", "required": True, "schema": {"type": "string"}})
        if "{task_id}" in path:
            params.append({"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}})
        op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": {
            str(status): {"description": "success", **({"content": {"application/json": {"schema": schema}}}
                                                      if schema else {})},
            "400": {"description": "bad input", "content": {"application/json": {"schema": ERROR}}},
            "404": {"description": "unknown camera or route", "content": {"application/json": {"schema": ERROR}}},
            "503": {"description": "Redis unreachable", "content": {"application/json": {"schema": ERROR}}}}}
        if path in OPEN_PATHS:
            op["security"] = []
        if path not in OPEN_PATHS or path == "/api/login":
            op["responses"]["401"] = {"description": "with TC_API_TOKEN set: no or wrong token, or a token in the "
                                      "URL", "content": {"application/json": {"schema": ERROR}}}
        if model is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "traffic_celery", "version": "1", "description": "Cameras, zones, calibration, "
                 "incidents, alerts and keys. Live events (detections, assessments, incidents, camera status) come "
                 "over the WebSocket /ws (README, 'The web tier')."},
        "paths": paths,
        "security": [{"bearer": []}, {"session": []}],  # with TC_API_TOKEN set
        "components": {"securitySchemes": SECURITY, "schemas": {
            "Login": Login.model_json_schema(),
            "CameraCreate": CameraCreate.model_json_schema(), "CameraChange": CameraChange.model_json_schema(),
            "ZonesBody": ZonesBody.model_json_schema(), "Calibration": Calibration.model_json_schema(),
            "Incident": Incident.model_json_schema(),
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "field": {"type": ["string", "null"]}}},
            "Camera": {"type": "object", "properties": {
                "cameraId": {"type": "string"}, "url": {"type": "string"},
                "frameInterval": {"type": ["number", "null"]}, "enabled": {"type": "boolean"},
                "node": {"type": ["string", "null"]},
                "state": {"enum": ["starting", "online", "reconnecting", "offline", "stopped"]},
                "message": {"type": "string"}, "framesAnalysed": {"type": "integer"},
                "tasksEnqueued": {"type": "integer"}, "reconnects": {"type": "integer"},
                "zones": {"type": "array"}, "calibration": {"type": ["object", "null"]},
                "calibrated": {"type": "boolean"}, "context": {"type": ["string", "null"]},
                "detector": {"enum": ["yolo", "colour"]}}}}},
    }


@bp.get("/api/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(spec())
