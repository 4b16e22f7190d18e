"""REST for cameras: list, add, change, remove, start, stop, status, latest assessment, alert history and snapshots.

Everything goes through the camera registry in Redis (`traffic_celery.registry`); the capture nodes do the rest,
so any web process answers for any camera. Bodies are validated by pydantic models, which also give the OpenAPI
schemas; a bad request is `400 {"error": ..., "field": ...}`, an unknown camera `404`, an existing one `409`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from traffic_celery import names, store
from traffic_celery.capture.sources import UrlRefused, check_url
from traffic_celery.registry import CameraConfig
from traffic_celery.safety.calibration import Calibration
from traffic_celery.safety.zones import Zone, ZoneSet

from .errors import ApiError
from .runtime import runtime

bp = Blueprint("cameras_api", __name__, url_prefix="/api/cameras")

Seconds = StrictInt | StrictFloat | None


class CameraCreate(BaseModel):
    """A camera to add (and start, unless `enabled` is false)."""

    model_config = ConfigDict(extra="forbid")
    cameraId: StrictInt | StrictStr = Field(description="a number or a name: letters, digits, '-', '_'")
    url: StrictStr = Field(min_length=1, max_length=2048,
                           description="rtsp(s):// or http(s):// URL, a file in the media folder (TC_MEDIA_DIR) "
                           "or a webcam index 0-63")
    frameInterval: Seconds = Field(None, gt=0, le=60, description="seconds between analysed frames")
    enabled: StrictBool = True
    context: StrictStr | None = Field(None, max_length=300, description="told to the LLM with every group")
    detector: Literal["yolo", "colour"] = Field("yolo", description="colour: the synthetic scene's coloured road "
                                                "users (python -m traffic_celery.safety.synthetic)")
    imgsz: StrictInt | None = Field(None, ge=32, le=4096, description="the detector's input size (the frame's "
                                    "longer side, pixels) for this camera; null: TC_YOLO_IMGSZ")

    @field_validator("cameraId", mode="before")
    @classmethod
    def _camera_id(cls, value: Any) -> Any:
        names.camera_id(value)  # ValueError: pydantic reports it on the field
        return value


class CameraChange(BaseModel):
    """Fields to change; a running camera restarts on its new source."""

    model_config = ConfigDict(extra="forbid")
    url: StrictStr | None = Field(None, min_length=1, max_length=2048)
    frameInterval: Seconds = Field(None, gt=0, le=60)
    enabled: StrictBool | None = None
    context: StrictStr | None = Field(None, max_length=300, description="told to the LLM with every group of this "
                                      "camera, e.g. 'school crossing, limit 30 km/h'; null clears it")
    imgsz: StrictInt | None = Field(None, ge=32, le=4096, description="the detector's input size for this camera; "
                                    "null: TC_YOLO_IMGSZ")

    @field_validator("url", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:  # found by tests/test_fuzz.py: a null here once reached the registry
            raise ValueError("may not be null; leave the field out to keep its value")
        return value


def parse(model: type[BaseModel]) -> Any:
    raw = request.get_data(cache=False)  # raises 413 beyond MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object (Content-Type: application/json)")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else None  # top-level field (a union adds its member's name)
        if len(err["loc"]) > 1 and isinstance(err["loc"][1], int):  # an item of a list: say which one
            field = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field; allowed: {sorted(model.model_fields)}"
        raise ApiError(400, f"{field}: {message}" if field else message, field) from None


def camera_id_of(raw: Any) -> str:
    try:
        return names.camera_id(raw)
    except ValueError:
        raise ApiError(400, f"cameraId {names.CAMERA_ID_RULE}", "cameraId") from None


def entry(camera_id: str) -> dict[str, Any]:
    found = runtime(current_app).cameras.describe([camera_id_of(camera_id)])
    if not found:
        raise ApiError(404, f"no camera {camera_id}; add it with POST /api/cameras", "cameraId")
    return found[0]


@bp.get("")
def list_cameras() -> ResponseReturnValue:
    return jsonify(runtime(current_app).cameras.describe())


def checked_url(url: str) -> str:
    """The URL as stored, or a 400 naming `url` when it is refused (`traffic_celery.capture.sources.check_url`)."""
    try:
        return check_url(url, runtime(current_app).settings.media_dir)
    except UrlRefused as exc:
        raise ApiError(400, str(exc), "url") from None


@bp.post("")
def add_camera() -> ResponseReturnValue:
    body: CameraCreate = parse(CameraCreate)
    camera_id = camera_id_of(body.cameraId)
    config = CameraConfig(cameraId=camera_id, url=checked_url(body.url), frameInterval=body.frameInterval,
                          enabled=body.enabled, context=body.context, detector=body.detector, imgsz=body.imgsz)
    if not runtime(current_app).cameras.add(config):  # atomic: of two concurrent adds, one gets the 409
        raise ApiError(409, f"camera {camera_id} exists; change it with PATCH /api/cameras/{camera_id}",
                       "cameraId")
    return jsonify(entry(camera_id)), 201


@bp.get("/<camera_id>")
def get_camera(camera_id: str) -> ResponseReturnValue:
    return jsonify(entry(camera_id))


@bp.get("/<camera_id>/status")
def camera_status(camera_id: str) -> ResponseReturnValue:
    found = entry(camera_id)
    return jsonify({k: found.get(k) for k in ("cameraId", "enabled", "state", "message", "node", "framesAnalysed",
                                              "tasksEnqueued", "reconnects")})


@bp.patch("/<camera_id>")
def change_camera(camera_id: str) -> ResponseReturnValue:
    body: CameraChange = parse(CameraChange)
    changes = body.model_dump(exclude_unset=True)
    url = checked_url(changes["url"]) if "url" in changes else None

    def change(current: CameraConfig | None) -> CameraConfig | None:
        """The new config from the camera as it is in the registry now (run again if it changed meanwhile)."""
        if current is None:
            return None
        update = {"url": url or current.url, "frame_interval": changes.get("frameInterval", current.frame_interval),
                  "enabled": changes.get("enabled", current.enabled),
                  "context": changes.get("context", current.context),
                  "imgsz": changes.get("imgsz", current.imgsz)}
        if update["url"] != current.url:
            update["verified"] = False  # a new URL must prove itself
        # validated again as a whole (model_copy would not): nothing malformed reaches the registry
        return CameraConfig.model_validate({**current.model_dump(), **update})

    previous, _current = runtime(current_app).cameras.update(camera_id_of(camera_id), change)
    if previous is None:
        raise ApiError(404, f"no camera {camera_id}; add it with POST /api/cameras", "cameraId")
    return jsonify(entry(camera_id))


class ZonesBody(BaseModel):
    """The camera's whole list of zones and masks (it replaces the list)."""

    model_config = ConfigDict(extra="forbid")
    zones: list[Zone] = Field(max_length=64)


def _geometry_change(camera_id: str, **update: Any) -> ResponseReturnValue:
    """Change the camera's zones or calibration; its loop picks them up at the next frame (no restart)."""
    def change(current: CameraConfig | None) -> CameraConfig | None:
        return None if current is None else CameraConfig.model_validate({**current.model_dump(), **update})

    previous, _current = runtime(current_app).cameras.update(camera_id_of(camera_id), change)
    if previous is None:
        raise ApiError(404, f"no camera {camera_id}; add it with POST /api/cameras", "cameraId")
    return jsonify(entry(camera_id))


@bp.put("/<camera_id>/zones")
def put_zones(camera_id: str) -> ResponseReturnValue:
    """Replace the camera's zones and masks: `{"zones": [{"name", "kind": "zone"|"mask", "points": [[x, y], ...]}]}`,
    points as fractions of the frame (0-1), at least three, not crossing."""
    body: ZonesBody = parse(ZonesBody)
    try:
        ZoneSet(body.zones)
    except ValueError as exc:
        raise ApiError(400, str(exc), "zones") from None
    return _geometry_change(camera_id, zones=[z.model_dump() for z in body.zones])


@bp.put("/<camera_id>/calibration")
def put_calibration(camera_id: str) -> ResponseReturnValue:
    """Calibrate the camera to the ground: `{"image": [[x, y] x4], "world": [[x, y] x4]}`, image points as fractions
    of the frame, world points in metres, in the same order around a rectangle of known size on the road."""
    body: Calibration = parse(Calibration)
    return _geometry_change(camera_id, calibration=body.model_dump())


@bp.delete("/<camera_id>/calibration")
def delete_calibration(camera_id: str) -> ResponseReturnValue:
    return _geometry_change(camera_id, calibration=None)


@bp.delete("/<camera_id>")
def remove_camera(camera_id: str) -> ResponseReturnValue:
    if not runtime(current_app).cameras.remove(camera_id_of(camera_id)):
        raise ApiError(404, f"no camera {camera_id}", "cameraId")
    return Response(status=204)


@bp.post("/<camera_id>/start")
def start_camera(camera_id: str) -> ResponseReturnValue:
    if runtime(current_app).cameras.set_enabled(camera_id_of(camera_id), True) is None:
        raise ApiError(404, f"no camera {camera_id}; add it with POST /api/cameras", "cameraId")
    return jsonify(entry(camera_id))


@bp.post("/<camera_id>/stop")
def stop_camera(camera_id: str) -> ResponseReturnValue:
    if runtime(current_app).cameras.set_enabled(camera_id_of(camera_id), False) is None:
        raise ApiError(404, f"no camera {camera_id}", "cameraId")
    return jsonify(entry(camera_id))


@bp.get("/<camera_id>/latest")
def latest(camera_id: str) -> ResponseReturnValue:
    found = store.latest_assessment(runtime(current_app).redis, camera_id_of(camera_id))
    if found is None:
        raise ApiError(404, f"no assessment for camera {camera_id} yet", "cameraId")
    return jsonify(found)


@bp.get("/<camera_id>/alerts")
def alerts(camera_id: str) -> ResponseReturnValue:
    """A page of the camera's alert history, newest first: `?limit=1..100` (20) and `?before=<alertId>`."""
    camera_id = camera_id_of(camera_id)
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError:
        raise ApiError(400, "limit must be a whole number from 1 to 100", "limit") from None
    if not 1 <= limit <= 100:
        raise ApiError(400, "limit must be a whole number from 1 to 100", "limit")
    before = request.args.get("before")
    if before is not None and not _stream_id(before):
        raise ApiError(400, "before must be an alertId from a previous page (like 1700000000000-0)", "before")
    items, cursor = store.alert_history(runtime(current_app).redis, camera_id, limit, before)
    for item in items:
        item["snapshot"] = f"/api/cameras/{camera_id}/alerts/{item['taskId']}/snapshot.jpg"
    return jsonify({"items": items, "next": cursor})


@bp.get("/<camera_id>/alerts/<task_id>/snapshot.jpg")
def alert_snapshot(camera_id: str, task_id: str) -> ResponseReturnValue:
    camera_id = camera_id_of(camera_id)
    if not names.CAMERA_ID_RE.match(task_id):
        raise ApiError(400, "not a task id", "taskId")
    jpeg = store.snapshot(runtime(current_app).redis, camera_id, task_id)
    if jpeg is None:
        raise ApiError(404, f"camera {camera_id} has no snapshot for alert {task_id} (expired after "
                       "TC_SNAPSHOT_TTL, never kept, or another camera's alert)", "taskId")
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": "max-age=86400"})


def _stream_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())
