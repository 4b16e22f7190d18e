"""REST for incidents, read from the SQL history: a filtered, paged list, one incident, its snapshot and its clip.

`GET /api/incidents?cameraId=&zone=&severity=&since=&until=&limit=&cursor=` lists newest first; `severity` is a
minimum (`medium` gives medium and high), `since`/`until` are epoch seconds on the start time, `limit` 1-500 (50)
and `cursor` the `next` of the previous page. Live changes arrive on the WebSocket as `incident` events.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from traffic_celery import names

from .errors import ApiError
from .runtime import runtime

logger = logging.getLogger(__name__)

bp = Blueprint("incidents_api", __name__, url_prefix="/api/incidents")

SEVERITIES = ("low", "medium", "high")
INCIDENT_ID_RE = names.CAMERA_ID_RE


def _number(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a time in epoch seconds, like 1700000000", name) from None


def _incident_id(raw: str) -> str:
    if not INCIDENT_ID_RE.match(raw):
        raise ApiError(400, "not an incident id", "incidentId")
    return raw


@bp.errorhandler(SQLAlchemyError)
def database_down(exc: SQLAlchemyError) -> ResponseReturnValue:
    logger.warning("incident history unavailable: %s", exc)
    return jsonify(error="the incident history cannot be read (database unreachable?); check TC_DATABASE_URL"), 503


@bp.get("")
def list_incidents() -> ResponseReturnValue:
    args = request.args
    camera = args.get("cameraId") or None
    if camera is not None:
        try:
            camera = names.camera_id(camera)
        except ValueError:
            raise ApiError(400, f"cameraId {names.CAMERA_ID_RULE}", "cameraId") from None
    severity = args.get("severity") or None
    if severity is not None and severity not in SEVERITIES:
        raise ApiError(400, f"severity must be one of {', '.join(SEVERITIES)} (a minimum)", "severity")
    try:
        limit = int(args.get("limit", 50))
    except ValueError:
        raise ApiError(400, "limit must be a whole number from 1 to 500", "limit") from None
    if not 1 <= limit <= 500:
        raise ApiError(400, "limit must be a whole number from 1 to 500", "limit")
    try:
        items, cursor = runtime(current_app).history.list(
            camera_id=camera, zone=args.get("zone") or None, severity=severity, since=_number("since"),
            until=_number("until"), limit=limit, cursor=args.get("cursor") or None)
    except ValueError as exc:
        raise ApiError(400, str(exc), "cursor") from None
    return jsonify({"items": [i.to_wire() for i in items], "next": cursor})


@bp.get("/<incident_id>")
def get_incident(incident_id: str) -> ResponseReturnValue:
    found = runtime(current_app).history.get(_incident_id(incident_id))
    if found is None:
        raise ApiError(404, f"no incident {incident_id} (never recorded, or older than "
                       "TC_INCIDENT_RETENTION_DAYS)", "incidentId")
    return jsonify(found.to_wire())


def _media(incident_id: str, kind: str) -> ResponseReturnValue:
    found = runtime(current_app).history.media(_incident_id(incident_id), kind)
    if found is None:
        raise ApiError(404, f"incident {incident_id} has no {kind} (yet: a clip is written when the incident "
                       "ends and its post-roll is over)", "incidentId")
    content_type, data = found
    return Response(data, mimetype=content_type, headers={"Cache-Control": "max-age=3600"})


@bp.get("/<incident_id>/snapshot")
def incident_snapshot(incident_id: str) -> ResponseReturnValue:
    return _media(incident_id, "snapshot")


@bp.get("/<incident_id>/clip")
def incident_clip(incident_id: str) -> ResponseReturnValue:
    return _media(incident_id, "clip")
