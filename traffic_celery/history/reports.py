"""Reports from the incident history: counts per time bucket, a near-miss heat map per camera, a safety ranking of
cameras and zones, and CSV exports. Read-only; the REST API (`web/reports_api.py`) and `bench/reports.py` use it.

Everything is aggregated in the database where SQL can (SQLite and PostgreSQL alike, through SQLAlchemy): buckets,
counts, severity sums and the worst TTC/PET are GROUP BY queries, and the classes of an incident (a JSON list) are
unnested by the database itself (`json_each` on SQLite, `json_array_elements_text` on PostgreSQL). Python only
sorts the (small) results, fills empty buckets, renders the heat map and writes CSV.

**Periods** are `[since, until)` on an incident's start time (`started_at`, epoch seconds): an incident belongs to
the period, and to the bucket, in which it started, however long it lasted. A period is at most
:data:`MAX_PERIOD_DAYS` days; the default is the last 24 hours (:func:`period`).

**Counting rules** of :meth:`Reports.counts` (the table of rows):

- a bucket is `floor(started_at / size) * size` with a size of 15 or 60 minutes, so buckets are aligned to the epoch
  (UTC quarter hours and hours); the first and last bucket of a period may be partial;
- one row per bucket x camera x zone x class x conflict type x severity, with the number of incidents;
- an incident in two zones counts once in each zone (its rows add up to more than one incident); an incident in
  no zone counts under the zone `""` (the empty string, not null, so JSON and CSV say the same thing);
- an incident counts once under each of its classes (`["car", "person"]`: one row for car, one for person; a class
  listed twice counts once); an incident without classes counts under the class `""`;
- an incident without a conflict type (opened by an LLM verdict alone) counts under the conflict type `""`.

So the rows are for slicing ("how many incidents with a person in zone crossing?"), not for adding up. The
`series` of :class:`Counts` count each incident exactly once per bucket and severity: that is what the page's chart
draws and what "incidents per hour" means.

**Ranking** (:meth:`Reports.ranking`): a camera's (or a zone's) score is the sum of its incidents' severity weights
(:data:`SEVERITY_WEIGHTS`: high 3, medium 2, low 1), with the count per severity and the worst (smallest) TTC and PET
of its incidents' worst moments. Ordered by score, then high, then medium incidents, then id. Zones are per camera
(a zone's name belongs to its camera); incidents in no zone are left out of the zone ranking (they are in the
camera's).

**Heat map** (:meth:`Reports.heatmap`): the conflict points (`metrics.point`, image pixels) of a camera's incidents
in the period, each a Gaussian blob (sigma 1.2% of the frame's diagonal), colour-mapped with OpenCV's JET and blended
over the camera's most recent snapshot in the history (any period); with no snapshot, over a grey frame of the
smallest 16:9 size of a usual width that holds every point, else 1280x720. Pixels further than about 2.6 sigma
from every point keep the reference frame's colour exactly. Points outside the frame are left out (and counted).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    exists,
    func,
    literal_column,
    or_,
    select,
    true,
)

from traffic_celery.history.store import INCIDENTS, MEDIA, VERDICTS, ZONES, History
from traffic_celery.protocol import SEVERITY_RANK

logger = logging.getLogger(__name__)

SEVERITIES = ("low", "medium", "high")
SEVERITY_WEIGHTS: dict[str, int] = {"high": 3, "medium": 2, "low": 1}
BUCKET_MINUTES = (15, 60)
DAY = 86400.0
DEFAULT_PERIOD = DAY
MAX_PERIOD_DAYS = 92
MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: beyond it a time has no ISO 8601 form
NONE = ""  # the zone, class or conflict type of an incident that has none
DEFAULT_FRAME = (1280, 720)
STANDARD_WIDTHS = (640, 960, 1280, 1920, 2560, 3840)  # the grey frame: the smallest 16:9 of these holding the points
GREY = 96
SIGMA_FRACTION = 0.012  # blob sigma, as a fraction of the frame's diagonal
BLOB_CUT = 0.03  # density (1.0 = the peak of a lone point) under which the reference frame shows unchanged
MAX_ALPHA = 0.85
CSV_PAGE = 1000

INCIDENT_CSV_COLUMNS = ("id", "camera", "started_at", "ended_at", "severity", "conflict_type", "zones", "classes",
                        "ttc", "pet", "min_distance", "units", "verdicts")
COUNT_CSV_COLUMNS = ("bucket_start", "bucket", "camera", "zone", "class", "conflict_type", "severity", "count")


class ReportError(ValueError):
    """A bad parameter of a report: the message says what and how to fix it; `field` names the parameter."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def iso(t: float | None) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (`2023-11-15T00:01:15.500Z`); "" for None."""
    if t is None:
        return ""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def period(since: float | None, until: float | None, now: float | None = None) -> tuple[float, float]:
    """The `[since, until)` of a report: `until` defaults to now, `since` to 24 hours before `until`.
    :class:`ReportError` unless both are times from 1970 to 9999, `since < until` and the period is at most
    :data:`MAX_PERIOD_DAYS` days."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and (not math.isfinite(value) or not 0 <= value <= MAX_TIME):
            raise ReportError(f"{name} must be a time in epoch seconds (like 1700000000), not {value}", name)
    end = float(until) if until is not None else (time.time() if now is None else now)
    start = float(since) if since is not None else end - DEFAULT_PERIOD
    if start >= end:
        raise ReportError(f"since ({iso(start)}) must be before until ({iso(end)})", "since")
    if end - start > MAX_PERIOD_DAYS * DAY:
        raise ReportError(f"the period is {(end - start) / DAY:.1f} days; a report covers at most "
                          f"{MAX_PERIOD_DAYS} days: narrow since/until", "since")
    return start, end


def bucket_seconds(minutes: int) -> int:
    if minutes not in BUCKET_MINUTES:
        raise ReportError(f"bucket must be one of {', '.join(map(str, BUCKET_MINUTES))} (minutes), not {minutes}",
                          "bucket")
    return minutes * 60


def _num(value: Any) -> float | None:
    """A finite float, else None (JSON may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --- results ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CountRow:
    bucket: int  # start of the bucket, epoch seconds
    camera_id: str
    zone: str
    class_name: str
    conflict_type: str
    severity: str
    count: int

    def to_wire(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "bucketStart": iso(self.bucket), "cameraId": self.camera_id,
                "zone": self.zone, "class": self.class_name, "conflictType": self.conflict_type,
                "severity": self.severity, "count": self.count}


@dataclass(frozen=True)
class Counts:
    since: float
    until: float
    bucket_seconds: int
    camera_id: str | None
    buckets: list[int]  # the start of every bucket of the period, oldest first
    series: dict[str, list[int]]  # severity -> incidents per bucket (each incident once), parallel to `buckets`
    incidents: int  # incidents in the period (each once)
    rows: list[CountRow] | None  # None when left out (`rows=False`)

    def to_wire(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "bucketMinutes": self.bucket_seconds // 60,
                "cameraId": self.camera_id, "buckets": self.buckets, "series": self.series,
                "incidents": self.incidents,
                "rows": None if self.rows is None else [r.to_wire() for r in self.rows]}


@dataclass(frozen=True)
class RankRow:
    camera_id: str
    zone: str | None  # None in the camera ranking
    score: int
    incidents: int
    high: int
    medium: int
    low: int
    worst_ttc: float | None
    worst_pet: float | None

    def to_wire(self) -> dict[str, Any]:
        wire = {"cameraId": self.camera_id, "score": self.score, "incidents": self.incidents, "high": self.high,
                "medium": self.medium, "low": self.low, "worstTtc": self.worst_ttc, "worstPet": self.worst_pet}
        return wire if self.zone is None else {"cameraId": self.camera_id, "zone": self.zone,
                                               **{k: v for k, v in wire.items() if k != "cameraId"}}


@dataclass(frozen=True)
class Ranking:
    since: float
    until: float
    cameras: list[RankRow]
    zones: list[RankRow]
    weights: dict[str, int] = field(default_factory=lambda: dict(SEVERITY_WEIGHTS))

    def to_wire(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "weights": self.weights,
                "cameras": [r.to_wire() for r in self.cameras], "zones": [r.to_wire() for r in self.zones]}


@dataclass(frozen=True)
class HeatMap:
    png: bytes
    width: int
    height: int
    points: int  # conflict points drawn
    outside: int  # points outside the frame, left out
    reference: str  # "snapshot" (the camera's latest) or "grey"

    def info(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "png"}


# --- the reports --------------------------------------------------------------------------------------------------

class Reports:
    """The reports of one :class:`History` (SQLite or PostgreSQL). Thread-safe: each call takes its own connection."""

    def __init__(self, history: History):
        self._engine = history.engine
        self._dialect = self._engine.dialect.name

    # building blocks

    def _bucket(self, size: int) -> ColumnElement[Any]:
        """floor(started_at / size) * size, in SQL. `size` is one of the checked bucket sizes (an int), so it is
        written as a literal: PostgreSQL then sees the same expression in SELECT and GROUP BY."""
        width: ColumnElement[int] = literal_column(str(int(size)), Integer)
        if self._dialect == "sqlite":  # started_at >= 0 (checked): truncation is floor, and needs no math functions
            return cast(INCIDENTS.c.started_at / width, Integer) * width
        return func.floor(INCIDENTS.c.started_at / width) * width

    def _classes(self) -> Any:
        """The incident's classes (a JSON list) as a table of `value`, one row per class, joined laterally."""
        if self._dialect == "sqlite":
            return func.json_each(INCIDENTS.c.classes).table_valued("value").alias("incident_class")
        return func.json_array_elements_text(INCIDENTS.c.classes).table_valued("value").alias("incident_class")

    @staticmethod
    def _in_period(since: float, until: float, camera_id: str | None = None) -> list[ColumnElement[bool]]:
        where = [INCIDENTS.c.started_at >= since, INCIDENTS.c.started_at < until]
        if camera_id is not None:
            where.append(INCIDENTS.c.camera_id == camera_id)
        return where

    # counts

    def counts(self, since: float | None = None, until: float | None = None, bucket_minutes: int = 15,
               camera_id: str | None = None, rows: bool = True) -> Counts:
        """Incident counts per bucket (see the module's counting rules), optionally of one camera. `rows=False`
        leaves the table of rows out (and its query, the expensive one): the series alone, what a chart needs."""
        start, end = period(since, until)
        size = bucket_seconds(bucket_minutes)
        bucket = self._bucket(size).label("bucket")
        where = self._in_period(start, end, camera_id)
        classes = self._classes()
        zone = func.coalesce(ZONES.c.zone, NONE).label("zone")
        class_name = func.coalesce(classes.c.value, NONE).label("class_name")
        conflict = func.coalesce(INCIDENTS.c.conflict_type, NONE).label("conflict_type")
        table = (select(bucket, INCIDENTS.c.camera_id, zone, class_name, conflict, INCIDENTS.c.severity,
                        func.count(INCIDENTS.c.id.distinct()).label("n"))
                 .select_from(INCIDENTS.outerjoin(ZONES, ZONES.c.incident_id == INCIDENTS.c.id)
                              .outerjoin(classes, true()))
                 .where(*where)
                 .group_by(bucket, INCIDENTS.c.camera_id, zone, class_name, conflict, INCIDENTS.c.severity))
        series_q = (select(bucket, INCIDENTS.c.severity, func.count().label("n")).where(*where)
                    .group_by(bucket, INCIDENTS.c.severity))
        with self._engine.connect() as connection:
            # sorted here, not by SQL: the same order on both databases, whatever PostgreSQL's collation
            keyed = sorted((int(b), str(camera), str(z), str(c), str(t), -SEVERITY_RANK.get(str(s), 0), str(s), int(n))
                           for b, camera, z, c, t, s, n in connection.execute(table).tuples()) if rows else None
            per_bucket = [(int(b), str(s), int(n)) for b, s, n in connection.execute(series_q).tuples()]
        table_rows = None if keyed is None else [CountRow(b, camera, z, c, t, s, n)
                                                 for b, camera, z, c, t, _, s, n in keyed]
        first = int(start // size) * size
        buckets = list(range(first, int(math.ceil(end / size)) * size, size))
        index = {b: i for i, b in enumerate(buckets)}
        series = {s: [0] * len(buckets) for s in SEVERITIES}
        for b, severity, n in per_bucket:
            if severity in series and b in index:
                series[severity][index[b]] += n
        return Counts(since=start, until=end, bucket_seconds=size, camera_id=camera_id, buckets=buckets,
                      series=series, incidents=sum(n for _, _, n in per_bucket), rows=table_rows)

    # ranking

    def ranking(self, since: float | None = None, until: float | None = None) -> Ranking:
        """Cameras, and zones of cameras, ranked by the severity-weighted number of their incidents."""
        start, end = period(since, until)
        where = self._in_period(start, end)

        def per(severity: str) -> ColumnElement[Any]:
            return func.sum(case((INCIDENTS.c.severity == severity, 1), else_=0))

        score = func.sum(case(*[(INCIDENTS.c.severity == s, w) for s, w in SEVERITY_WEIGHTS.items()], else_=0))
        measures = (score.label("score"), func.count().label("n"), per("high").label("high"),
                    per("medium").label("medium"), per("low").label("low"),
                    func.min(INCIDENTS.c.metrics["ttc"].as_float()).label("ttc"),
                    func.min(INCIDENTS.c.metrics["pet"].as_float()).label("pet"))
        cameras_q = select(INCIDENTS.c.camera_id, *measures).where(*where).group_by(INCIDENTS.c.camera_id)
        zones_q = (select(INCIDENTS.c.camera_id, ZONES.c.zone, *measures)
                   .select_from(INCIDENTS.join(ZONES, ZONES.c.incident_id == INCIDENTS.c.id))
                   .where(*where).group_by(INCIDENTS.c.camera_id, ZONES.c.zone))
        with self._engine.connect() as connection:
            cameras = [self._rank_row(r, None) for r in connection.execute(cameras_q)]
            zones = [self._rank_row(r, str(r.zone)) for r in connection.execute(zones_q)]

        def order(r: RankRow) -> tuple[int, int, int, str, str]:
            return (-r.score, -r.high, -r.medium, r.camera_id, r.zone or "")

        return Ranking(since=start, until=end, cameras=sorted(cameras, key=order), zones=sorted(zones, key=order))

    @staticmethod
    def _rank_row(r: Any, zone: str | None) -> RankRow:
        return RankRow(camera_id=str(r.camera_id), zone=zone, score=int(r.score or 0), incidents=int(r.n),
                       high=int(r.high or 0), medium=int(r.medium or 0), low=int(r.low or 0),
                       worst_ttc=_num(r.ttc), worst_pet=_num(r.pet))

    # heat map

    def heatmap(self, camera_id: str, since: float | None = None, until: float | None = None) -> HeatMap:
        """The near-miss heat map of one camera over the period, as PNG (see the module's docstring)."""
        start, end = period(since, until)
        points_q = (select(INCIDENTS.c.metrics["point"].label("point"))
                    .where(*self._in_period(start, end, camera_id), INCIDENTS.c.metrics.is_not(None)))
        snapshot_q = (select(MEDIA.c.data)
                      .select_from(MEDIA.join(INCIDENTS, INCIDENTS.c.id == MEDIA.c.incident_id))
                      .where(INCIDENTS.c.camera_id == camera_id, MEDIA.c.kind == "snapshot")
                      .order_by(INCIDENTS.c.started_at.desc(), INCIDENTS.c.id.desc()).limit(1))
        with self._engine.connect() as connection:
            points = [p for (raw,) in connection.execute(points_q) if (p := _point(raw)) is not None]
            jpeg = connection.execute(snapshot_q).scalar()
        reference: NDArray[np.uint8] | None = None
        if jpeg is not None:
            decoded = cv2.imdecode(np.frombuffer(bytes(jpeg), np.uint8), cv2.IMREAD_COLOR)
            if decoded is None:
                logger.warning("camera %s: its latest snapshot does not decode; the heat map is drawn on grey",
                               camera_id)
            else:
                reference = decoded.astype(np.uint8, copy=False)
        kind = "snapshot" if reference is not None else "grey"
        if reference is None:
            width, height = implied_size(points)
            reference = np.full((height, width, 3), GREY, np.uint8)
        image, drawn = render_heatmap(reference, points)
        ok, png = cv2.imencode(".png", image, [int(cv2.IMWRITE_PNG_COMPRESSION), 3])
        if not ok:
            raise RuntimeError("PNG encoding of the heat map failed")
        return HeatMap(png=png.tobytes(), width=image.shape[1], height=image.shape[0], points=drawn,
                       outside=len(points) - drawn, reference=kind)

    # CSV

    def incident_rows(self, since: float | None = None, until: float | None = None, camera_id: str | None = None,
                      zone: str | None = None, severity: str | None = None, page_size: int = CSV_PAGE
                      ) -> Iterator[dict[str, str]]:
        """One dict per incident (the CSV's columns, as text), oldest first, read `page_size` at a time (keyset on
        started_at, id), so a month of a busy camera streams in constant memory. Filters as `History.list`:
        `zone` touched, `severity` a minimum."""
        start, end = period(since, until)
        where = self._in_period(start, end, camera_id)
        if zone is not None:
            where.append(exists().where(ZONES.c.incident_id == INCIDENTS.c.id, ZONES.c.zone == zone))
        if severity is not None:
            if severity not in SEVERITIES:
                raise ReportError(f"severity must be one of {', '.join(SEVERITIES)} (a minimum), not {severity!r}",
                                  "severity")
            where.append(INCIDENTS.c.severity_rank >= SEVERITY_RANK[severity])
        metrics = INCIDENTS.c.metrics
        columns = (INCIDENTS.c.id, INCIDENTS.c.camera_id, INCIDENTS.c.started_at, INCIDENTS.c.ended_at,
                   INCIDENTS.c.severity, INCIDENTS.c.conflict_type, INCIDENTS.c.classes,
                   metrics["ttc"].as_float().label("ttc"), metrics["pet"].as_float().label("pet"),
                   metrics["minDistance"].as_float().label("min_distance"),
                   metrics["units"].as_string().label("units"))
        after: tuple[float, str] | None = None
        while True:
            query = select(*columns).where(*where).order_by(INCIDENTS.c.started_at, INCIDENTS.c.id).limit(page_size)
            if after is not None:
                query = query.where(or_(INCIDENTS.c.started_at > after[0],
                                        and_(INCIDENTS.c.started_at == after[0], INCIDENTS.c.id > after[1])))
            with self._engine.connect() as connection:
                page = list(connection.execute(query))
                if not page:
                    return
                ids = [r.id for r in page]
                zones: dict[str, list[str]] = {}
                for incident_id, name in connection.execute(
                        select(ZONES.c.incident_id, ZONES.c.zone).where(ZONES.c.incident_id.in_(ids))):
                    zones.setdefault(incident_id, []).append(name)
                verdicts: dict[str, int] = dict(connection.execute(
                    select(VERDICTS.c.incident_id, func.count()).where(VERDICTS.c.incident_id.in_(ids))
                    .group_by(VERDICTS.c.incident_id)).tuples().all())
            for r in page:
                yield {"id": r.id, "camera": r.camera_id, "started_at": iso(r.started_at), "ended_at": iso(r.ended_at),
                       "severity": r.severity, "conflict_type": r.conflict_type or "",
                       "zones": ";".join(sorted(zones.get(r.id, []))), "classes": ";".join(r.classes or []),
                       "ttc": _text(r.ttc), "pet": _text(r.pet), "min_distance": _text(r.min_distance),
                       "units": r.units or "", "verdicts": str(int(verdicts.get(r.id, 0)))}
            if len(page) < page_size:
                return
            after = (page[-1].started_at, page[-1].id)

    def incidents_csv(self, since: float | None = None, until: float | None = None, camera_id: str | None = None,
                      zone: str | None = None, severity: str | None = None) -> Iterator[str]:
        """The incidents as CSV text, in chunks (header first). The arguments are checked before the first chunk,
        so a bad one raises here, not halfway through a response."""
        rows = self.incident_rows(since, until, camera_id, zone, severity)
        first = next(rows, None)  # runs the checks and the first query now
        return _csv_chunks(INCIDENT_CSV_COLUMNS, rows if first is None else _chain(first, rows))


def counts_csv(counts: Counts) -> str:
    """The rows of a :class:`Counts` as CSV (only the header when they were left out)."""
    return "".join(_csv_chunks(COUNT_CSV_COLUMNS, (
        {"bucket_start": iso(r.bucket), "bucket": str(r.bucket), "camera": r.camera_id, "zone": r.zone,
         "class": r.class_name, "conflict_type": r.conflict_type, "severity": r.severity, "count": str(r.count)}
        for r in counts.rows or [])))


def _chain(first: dict[str, str], rest: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
    yield first
    yield from rest


def _csv_chunks(columns: Sequence[str], rows: Iterable[dict[str, str]], chunk: int = 500) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    for i, row in enumerate(rows, 1):
        writer.writerow(row)
        if i % chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _text(value: Any) -> str:
    number = _num(value)
    return "" if number is None else repr(number)


# --- the heat map's drawing ---------------------------------------------------------------------------------------

def _point(raw: Any) -> tuple[float, float] | None:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    x, y = _num(raw[0]), _num(raw[1])
    return None if x is None or y is None else (x, y)


def implied_size(points: Sequence[tuple[float, float]]) -> tuple[int, int]:
    """(width, height) of the grey frame under points without a snapshot: the smallest 16:9 frame of a usual width
    that holds every point; beyond 4K, the points' extent plus 10%; without points, 1280x720."""
    if not points:
        return DEFAULT_FRAME
    right = max(x for x, _ in points)
    bottom = max(y for _, y in points)
    for width in STANDARD_WIDTHS:
        height = width * 9 // 16
        if right < width and bottom < height:
            return width, height
    return int(math.ceil(right * 11 / 10)) + 1, int(math.ceil(bottom * 11 / 10)) + 1


def render_heatmap(reference: NDArray[np.uint8], points: Sequence[tuple[float, float]]
                   ) -> tuple[NDArray[np.uint8], int]:
    """The reference frame with the points' Gaussian blobs colour-mapped over it, and how many points were inside
    the frame. A lone point peaks at density 1.0; colours run blue (little) to red (the densest spot), on a log
    scale so a lone point still shows next to a hot spot; under :data:`BLOB_CUT` the frame is untouched."""
    height, width = reference.shape[:2]
    inside = [(int(round(x)), int(round(y))) for x, y in points if 0 <= round(x) < width and 0 <= round(y) < height]
    if not inside:
        return reference.copy(), 0
    sigma = max(3.0, SIGMA_FRACTION * math.hypot(width, height))
    density = np.zeros((height, width), np.float32)
    xs = np.fromiter((p[0] for p in inside), np.intp, len(inside))
    ys = np.fromiter((p[1] for p in inside), np.intp, len(inside))
    np.add.at(density, (ys, xs), 1.0)
    density = cv2.GaussianBlur(density, (0, 0), sigma) * np.float32(2 * math.pi * sigma * sigma)
    peak = max(float(density.max()), 1.0)
    level = np.log1p(np.maximum(density, 0)) / np.float32(math.log1p(peak))  # 0..1
    index = (40 + 180 * np.clip(level, 0, 1)).astype(np.uint8)  # JET from blue to bright red (its end is dark)
    colours = cv2.applyColorMap(index, cv2.COLORMAP_JET)
    alpha = MAX_ALPHA * np.clip((density - BLOB_CUT) / (0.5 - BLOB_CUT), 0, 1)
    alpha3 = alpha[..., None]
    blended = reference.astype(np.float32) * (1 - alpha3) + colours.astype(np.float32) * alpha3
    out = np.where(alpha3 > 0, np.clip(np.rint(blended), 0, 255), reference).astype(np.uint8)
    return out, len(inside)
