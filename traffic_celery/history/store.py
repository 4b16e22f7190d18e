"""`History`: the one way the system reads and writes the incident history (SQLite or PostgreSQL).

It owns the engine and its per-database setup (SQLite: foreign keys on, WAL, a busy timeout, the file's folder
created; PostgreSQL through psycopg 3), the schema's migration at start (Alembic, safe when several processes start
at once), and the mapping between the protocol's :class:`~traffic_celery.protocol.Incident` and the rows of
`models`. Everything else (the recorder, the REST API, retention) goes through this class, never through SQL; the
read-only aggregates of `reports` (counts, heat maps, rankings, CSV) use its :attr:`History.engine`.

Writes are idempotent: saving an incident again replaces its row and zones, and a verdict (by task id) is stored once
whatever arrives twice. Lists page by keyset on (started_at, id), newest first, with an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Table,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping, make_url
from sqlalchemy.exc import DBAPIError

from traffic_celery.history.models import MEDIA_KINDS, Base
from traffic_celery.protocol import SEVERITY_RANK, Incident, Verdict

if TYPE_CHECKING:
    from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for another one's lock
MIGRATION_LOCK = 0x7C_1A5E_0001  # PostgreSQL advisory lock key held while migrating
MAX_LIMIT = 500
_IMMEDIATE = "tc_sqlite_immediate"  # execution option: begin the SQLite transaction with BEGIN IMMEDIATE

INCIDENTS: Table = Base.metadata.tables["incidents"]
ZONES: Table = Base.metadata.tables["incident_zones"]
VERDICTS: Table = Base.metadata.tables["verdicts"]
MEDIA: Table = Base.metadata.tables["incident_media"]

_UPDATED_ON_SAVE = ("camera_id", "state", "severity", "severity_rank", "opened_by", "group_id", "conflict_type",
                    "started_at", "updated_at", "ended_at", "classes", "track_ids", "metrics")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _sqlite_begin): the sqlite3 module's own transaction handling would run DDL
    # outside transactions and could not take the write lock up front
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # writers take the write lock at BEGIN: a deferred transaction that reads, then writes, fails at once with
    # "database is locked" when another writer got in between, whatever the busy timeout
    immediate = connection.get_execution_options().get(_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # psycopg 3 is the driver installed (the default would be psycopg2)
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    raise ValueError(f"the incident history runs on SQLite or PostgreSQL, not {backend!r} "
                     "(TC_DATABASE_URL sqlite:///path or postgresql+psycopg://user@host/db)")


def _encode_cursor(started_at: float, incident_id: str) -> str:
    raw = json.dumps([started_at, incident_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, incident_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        started_at = incident_id = None
    if (isinstance(started_at, bool) or not isinstance(started_at, int | float) or not math.isfinite(started_at)
            or not isinstance(incident_id, str)):
        raise ValueError("invalid cursor: pass the `next` value of the previous page unchanged")
    return float(started_at), incident_id


def _incident_values(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.incidentId,
        "camera_id": incident.cameraId,
        "state": str(incident.state),  # a StrEnum, or a str from model_copy(update=...)
        "severity": incident.severity,
        "severity_rank": SEVERITY_RANK[incident.severity],
        "opened_by": incident.openedBy,
        "group_id": incident.groupId,
        "conflict_type": incident.conflictType,
        "started_at": incident.startedAt,
        "updated_at": incident.updatedAt,
        "ended_at": incident.endedAt,
        "classes": list(incident.classes),
        "track_ids": list(incident.trackIds),
        "metrics": incident.metrics.to_wire() if incident.metrics is not None else None,
    }


def _verdict_values(incident_id: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "task_id": verdict.taskId,
        "incident_id": incident_id,
        "risk_level": verdict.riskLevel,
        "risk_types": list(verdict.riskTypes),
        "description": verdict.description,
        "confidence": verdict.confidence,
        "llm_model": verdict.llmModel,
        "api_key_id": verdict.apiKeyId,
        "at": verdict.at,
    }


def _media_url(incident_id: str, kind: str) -> str:
    return f"/api/incidents/{incident_id}/{kind}"


class History:
    """The incident history in the database at `url` (a SQLAlchemy URL). Thread-safe: every call takes its own
    connection from the engine's pool. Call :meth:`migrate` once at start, :meth:`close` at the end."""

    def __init__(self, url: str):
        self._engine = _make_engine(url)
        self._dialect = self._engine.dialect.name
        self.url = self._engine.url.render_as_string(hide_password=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> History:
        return cls(settings.effective_database_url)

    def __repr__(self) -> str:
        return f"History({self.url!r})"

    @property
    def engine(self) -> Engine:
        """The engine, for the read-only aggregates of `traffic_celery.history.reports` (same package)."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    # --- schema ---------------------------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic `upgrade head`); a no-op when it is there. Processes that
        start together serialize on a lock (PostgreSQL: an advisory lock; SQLite: the write lock of BEGIN
        IMMEDIATE), so the second one finds the schema made; an error of the race anyway is retried once."""
        try:
            self._upgrade()
        except DBAPIError as exc:  # e.g. "already exists" from a concurrent migrator without the lock
            logger.warning("migrating the incident history failed (%s); trying once more", exc.orig)
            self._upgrade()

    def _upgrade(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url",
                               self._engine.url.render_as_string(hide_password=False).replace("%", "%%"))
        with self._write() as connection:
            if self._dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        logger.debug("incident history %s: schema current", self.url)

    # --- writes ---------------------------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in a write transaction (committed at the end, rolled back on an error)."""
        with self._engine.connect() as connection:
            connection.execution_options(**{_IMMEDIATE: True})
            with connection.begin():
                yield connection

    def _insert(self, table: Table, rows: builtins.list[dict[str, Any]] | dict[str, Any], keys: Iterable[str],
                update: Iterable[str] = ()) -> Insert:
        """INSERT ... ON CONFLICT (keys) DO UPDATE the `update` columns (or DO NOTHING without any)."""
        columns, index = builtins.list(update), builtins.list(keys)
        if self._dialect == "postgresql":
            pg = postgresql.insert(table).values(rows)
            if not columns:
                return pg.on_conflict_do_nothing(index_elements=index)
            return pg.on_conflict_do_update(index_elements=index, set_={c: pg.excluded[c] for c in columns})
        lite = sqlite.insert(table).values(rows)
        if not columns:
            return lite.on_conflict_do_nothing(index_elements=index)
        return lite.on_conflict_do_update(index_elements=index, set_={c: lite.excluded[c] for c in columns})

    @staticmethod
    def _require(connection: Connection, incident_id: str) -> None:
        if connection.execute(select(INCIDENTS.c.id).where(INCIDENTS.c.id == incident_id)).first() is None:
            raise LookupError(f"no incident {incident_id} in the history (save the incident first)")

    def save(self, incident: Incident) -> None:
        """Insert or replace the incident (every field, so the stored state is the one saved last), replace its
        zones, and add those of its verdicts whose task id is not stored yet. `snapshotUrl`/`clipUrl` are not stored:
        they follow from the media (:meth:`put_media`)."""
        with self._write() as connection:
            connection.execute(self._insert(INCIDENTS, _incident_values(incident), ["id"], _UPDATED_ON_SAVE))
            connection.execute(delete(ZONES).where(ZONES.c.incident_id == incident.incidentId))
            zones = sorted(set(incident.zones))
            if zones:
                connection.execute(ZONES.insert(), [{"incident_id": incident.incidentId, "zone": z} for z in zones])
            if incident.verdicts:
                by_task = {v.taskId: v for v in incident.verdicts}  # one row per task id, even within one save
                connection.execute(self._insert(
                    VERDICTS, [_verdict_values(incident.incidentId, v) for v in by_task.values()], ["task_id"]))

    def add_verdict(self, incident_id: str, verdict: Verdict) -> bool:
        """Store one more verdict of a stored incident; False (and nothing changed) if its task id is stored.
        :class:`LookupError` if the incident is not in the history."""
        with self._write() as connection:
            self._require(connection, incident_id)
            inserted = connection.execute(self._insert(VERDICTS, _verdict_values(incident_id, verdict), ["task_id"])
                                          .returning(VERDICTS.c.task_id)).first()
            return inserted is not None

    def put_media(self, incident_id: str, kind: str, content_type: str, data: bytes) -> None:
        """Store (or replace) the incident's snapshot or clip. :class:`ValueError` for another kind,
        :class:`LookupError` if the incident is not in the history."""
        if kind not in MEDIA_KINDS:
            raise ValueError(f"media kind must be one of {', '.join(MEDIA_KINDS)}, not {kind!r}")
        with self._write() as connection:
            self._require(connection, incident_id)
            connection.execute(self._insert(
                MEDIA, {"incident_id": incident_id, "kind": kind, "content_type": content_type, "data": bytes(data)},
                ["incident_id", "kind"], ["content_type", "data"]))

    def purge(self, older_than: float) -> int:
        """Delete the incidents that ended (or, never ended, were last updated) before `older_than` (epoch s), with
        their zones, verdicts and media; the number of incidents deleted."""
        with self._write() as connection:
            result = connection.execute(
                delete(INCIDENTS).where(func.coalesce(INCIDENTS.c.ended_at, INCIDENTS.c.updated_at) < older_than))
            return int(result.rowcount)

    # --- reads ----------------------------------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(INCIDENTS).where(INCIDENTS.c.id == incident_id)).mappings().first()
            if row is None:
                return None
            return self._build(connection, [row])[0]

    def media(self, incident_id: str, kind: str) -> tuple[str, bytes] | None:
        """(content type, bytes) of the incident's snapshot or clip, None if it has none."""
        with self._engine.connect() as connection:
            row = connection.execute(select(MEDIA.c.content_type, MEDIA.c.data).where(
                MEDIA.c.incident_id == incident_id, MEDIA.c.kind == kind)).first()
        return None if row is None else (str(row.content_type), bytes(row.data))

    def list(self, camera_id: str | None = None, zone: str | None = None, severity: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[builtins.list[Incident], str | None]:
        """Incidents newest first (by start time, then id), filtered: `camera_id`; `zone` (touched it); `severity` a
        minimum ("medium": medium and high); `since <= startedAt < until`. One page of `limit` (1-500) and the
        cursor of the next page (None after the last); pass it back as `cursor`. :class:`ValueError` for a bad
        cursor, limit or severity."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
        query = select(INCIDENTS).order_by(INCIDENTS.c.started_at.desc(), INCIDENTS.c.id.desc()).limit(limit + 1)
        if camera_id is not None:
            query = query.where(INCIDENTS.c.camera_id == camera_id)
        if zone is not None:
            query = query.where(exists().where(ZONES.c.incident_id == INCIDENTS.c.id, ZONES.c.zone == zone))
        if severity is not None:
            rank = SEVERITY_RANK.get(severity, 0)
            if rank < 1:
                raise ValueError(f"severity must be one of low, medium, high, not {severity!r}")
            query = query.where(INCIDENTS.c.severity_rank >= rank)
        if since is not None:
            query = query.where(INCIDENTS.c.started_at >= since)
        if until is not None:
            query = query.where(INCIDENTS.c.started_at < until)
        if cursor is not None:
            after_started, after_id = _decode_cursor(cursor)
            query = query.where(or_(INCIDENTS.c.started_at < after_started,
                                    and_(INCIDENTS.c.started_at == after_started, INCIDENTS.c.id < after_id)))
        with self._engine.connect() as connection:
            rows = builtins.list(connection.execute(query).mappings())
            page, more = rows[:limit], len(rows) > limit
            items = self._build(connection, page)
        next_cursor = _encode_cursor(page[-1]["started_at"], page[-1]["id"]) if more else None
        return items, next_cursor

    def count(self) -> int:
        """How many incidents the history holds."""
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(INCIDENTS)).scalar_one())

    def _build(self, connection: Connection, rows: builtins.list[RowMapping]) -> builtins.list[Incident]:
        """Incidents from their rows, with their zones, verdicts (oldest first) and media URLs (which media exist is
        read without their bytes)."""
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        zones: defaultdict[str, builtins.list[str]] = defaultdict(builtins.list)
        for incident_id, zone in connection.execute(
                select(ZONES.c.incident_id, ZONES.c.zone).where(ZONES.c.incident_id.in_(ids)).order_by(ZONES.c.zone)):
            zones[incident_id].append(zone)
        verdicts: defaultdict[str, builtins.list[dict[str, Any]]] = defaultdict(builtins.list)
        for v in connection.execute(select(VERDICTS).where(VERDICTS.c.incident_id.in_(ids))
                                    .order_by(VERDICTS.c.at, VERDICTS.c.task_id)).mappings():
            verdicts[v["incident_id"]].append({
                "taskId": v["task_id"], "riskLevel": v["risk_level"], "riskTypes": v["risk_types"],
                "description": v["description"], "confidence": v["confidence"], "llmModel": v["llm_model"],
                "apiKeyId": v["api_key_id"], "at": v["at"]})
        media: defaultdict[str, set[str]] = defaultdict(set)
        for incident_id, kind in connection.execute(
                select(MEDIA.c.incident_id, MEDIA.c.kind).where(MEDIA.c.incident_id.in_(ids))):
            media[incident_id].add(kind)
        return [Incident.model_validate({
            "incidentId": row["id"], "cameraId": row["camera_id"], "state": row["state"],
            "severity": row["severity"], "openedBy": row["opened_by"], "startedAt": row["started_at"],
            "updatedAt": row["updated_at"], "endedAt": row["ended_at"], "groupId": row["group_id"],
            "zones": zones.get(row["id"], []), "classes": row["classes"], "trackIds": row["track_ids"],
            "conflictType": row["conflict_type"], "metrics": row["metrics"],
            "verdicts": verdicts.get(row["id"], []),
            "snapshotUrl": _media_url(row["id"], "snapshot") if "snapshot" in media[row["id"]] else None,
            "clipUrl": _media_url(row["id"], "clip") if "clip" in media[row["id"]] else None,
        }) for row in rows]
