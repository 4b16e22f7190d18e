"""REST for the reports of the incident history (`traffic_celery.history.reports`): counts per bucket, a camera's
near-miss heat map, the safety ranking, and CSV exports.

- `GET /api/reports/counts?bucket=15|60&cameraId=&since=&until=&format=json|csv&rows=1|0` (`rows=0`: the series
  per severity only, without the table of rows: what the page's chart needs, and much cheaper over a month)
- `GET /api/reports/heatmap/<camera_id>.png?since=&until=` (PNG; `X-Heatmap-Points`, `-Outside`, `-Reference`)
- `GET /api/reports/ranking?since=&until=`
- `GET /api/reports/incidents.csv?cameraId=&zone=&severity=&since=&until=` (the filters of `/api/incidents`)

Times are epoch seconds or ISO 8601 (`2023-11-15T00:00:00Z`; without an offset, UTC); the period is
`[since, until)` on the incidents' start, by default the last 24 hours, at most 92 days. A bad parameter is a 400
naming it; a database that does not answer is a 503.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from traffic_celery import names
from traffic_celery.history.reports import (
    BUCKET_MINUTES,
    SEVERITIES,
    ReportError,
    Reports,
    counts_csv,
    period,
)

from .errors import ApiError
from .runtime import runtime

logger = logging.getLogger(__name__)

bp = Blueprint("reports_api", __name__, url_prefix="/api/reports")

FORMATS = ("json", "csv")
FLAGS = {"1": True, "true": True, "0": False, "false": False}


@bp.errorhandler(ReportError)
def bad_parameter(exc: ReportError) -> ResponseReturnValue:
    return jsonify(error=str(exc), field=exc.field), 400


@bp.errorhandler(SQLAlchemyError)
def database_down(exc: SQLAlchemyError) -> ResponseReturnValue:
    logger.warning("incident history unavailable for a report: %s", exc)
    return jsonify(error="the incident history cannot be read (database unreachable?); check TC_DATABASE_URL",
                   field=None), 503


def _reports() -> Reports:
    return Reports(runtime(current_app).history)


def _time(name: str) -> float | None:
    """Epoch seconds, or ISO 8601 (a `+` of an offset that arrived as a space is put back); None when absent."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(raw.replace(" ", "+").replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            shown = raw if len(raw) <= 40 else raw[:40] + "…"
            raise ApiError(400, f"{name} must be epoch seconds (1700000000) or an ISO 8601 time "
                           f"(2023-11-15T00:00:00Z), not {shown!r}", name) from None
        value = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite time in epoch seconds, like 1700000000", name)
    return value


def _period() -> tuple[float, float]:
    return period(_time("since"), _time("until"))


def _camera(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        return names.camera_id(raw)
    except ValueError:
        raise ApiError(400, f"cameraId {names.CAMERA_ID_RULE}", "cameraId") from None


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


def _csv(body: str | Iterator[str], name: str) -> Response:
    return Response(body, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@bp.get("/counts")
def counts() -> ResponseReturnValue:
    args = request.args
    raw_bucket = args.get("bucket", "15").strip() or "15"
    choices = " or ".join(map(str, BUCKET_MINUTES))
    try:
        bucket = int(raw_bucket)
    except ValueError:
        raise ApiError(400, f"bucket must be {choices} (minutes)", "bucket") from None
    fmt = args.get("format", "json") or "json"
    if fmt not in FORMATS:
        raise ApiError(400, f"format must be {' or '.join(FORMATS)}", "format")
    with_rows = FLAGS.get((args.get("rows") or "1").lower())
    if with_rows is None:
        raise ApiError(400, "rows must be 1 (the table of rows too) or 0 (the series only)", "rows")
    camera = _camera(args.get("cameraId"))
    since, until = _period()
    result = _reports().counts(since, until, bucket, camera, rows=with_rows or fmt == "csv")
    if fmt == "csv":
        scope = f"-{camera}" if camera else ""
        return _csv(counts_csv(result), f"incident-counts{scope}-{bucket}min-{_stamp(since)}-{_stamp(until)}.csv")
    return jsonify(result.to_wire())


@bp.get("/heatmap/<camera_id>.png")
def heatmap(camera_id: str) -> ResponseReturnValue:
    camera = _camera(camera_id)
    assert camera is not None  # the route never passes an empty id
    since, until = _period()
    result = _reports().heatmap(camera, since, until)
    return Response(result.png, mimetype="image/png", headers={
        "Cache-Control": "no-store", "X-Heatmap-Points": str(result.points),
        "X-Heatmap-Outside": str(result.outside), "X-Heatmap-Reference": result.reference})


@bp.get("/ranking")
def ranking() -> ResponseReturnValue:
    since, until = _period()
    return jsonify(_reports().ranking(since, until).to_wire())


@bp.get("/incidents.csv")
def incidents_csv() -> ResponseReturnValue:
    args = request.args
    camera = _camera(args.get("cameraId"))
    severity = args.get("severity") or None
    if severity is not None and severity not in SEVERITIES:
        raise ApiError(400, f"severity must be one of {', '.join(SEVERITIES)} (a minimum)", "severity")
    zone = args.get("zone") or None
    since, until = _period()
    chunks = _reports().incidents_csv(since, until, camera, zone, severity)
    scope = f"-{camera}" if camera else ""
    return _csv(chunks, f"incidents{scope}-{_stamp(since)}-{_stamp(until)}.csv")
