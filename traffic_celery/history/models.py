"""The tables of the incident history, as SQLAlchemy 2 declarative models.

The schema is written twice on purpose: here (what the code queries) and in the hand-written Alembic migrations
(`migrations/versions/`, what creates it in a database). A test compares the two with Alembic's autogenerate, so a
column added here without a migration fails the tests.

Times are epoch seconds (float, as in the protocol); lists and the metrics are JSON (portable between SQLite and
PostgreSQL). Child rows (zones, verdicts, media) go with their incident through `ON DELETE CASCADE`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_LENGTH = 128
MEDIA_KINDS = ("snapshot", "clip")

# explicit constraint names: the migration names them the same, and renames stay possible on both databases
NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class IncidentRow(Base):
    """One incident: its latest state and its worst metrics."""

    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    state: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    severity_rank: Mapped[int] = mapped_column(Integer)  # 1 low, 2 medium, 3 high: the minimum-severity filter
    opened_by: Mapped[str] = mapped_column(String(32))
    group_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    conflict_type: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    ended_at: Mapped[float | None] = mapped_column(Double)
    classes: Mapped[list[str]] = mapped_column(JSON)
    track_ids: Mapped[list[int]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        CheckConstraint("severity_rank BETWEEN 1 AND 3", name="severity_rank"),
        Index("ix_incidents_camera_id_started_at", "camera_id", "started_at"),
        # the period queries of every camera, and the reports' counts per bucket read from the index alone
        # (migration 0002 widened it from started_at)
        Index("ix_incidents_started_at_covering", "started_at", "camera_id", "severity", "conflict_type"),
        Index("ix_incidents_severity_rank", "severity_rank"),
    )


class IncidentZoneRow(Base):
    """A zone an incident touched (one row per zone, so zone filters and per-zone reports use an index)."""

    __tablename__ = "incident_zones"

    incident_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("incidents.id", ondelete="CASCADE"),
                                             primary_key=True)
    zone: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)

    __table_args__ = (Index("ix_incident_zones_zone", "zone"),)


class VerdictRow(Base):
    """One LLM verdict of an incident; the task id is unique, so a verdict is never stored twice."""

    __tablename__ = "verdicts"

    task_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("incidents.id", ondelete="CASCADE"))
    risk_level: Mapped[str] = mapped_column(String(16))
    risk_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Double)
    llm_model: Mapped[str] = mapped_column(String(ID_LENGTH))
    api_key_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    at: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index("ix_verdicts_incident_id", "incident_id"),)


class IncidentMediaRow(Base):
    """An incident's snapshot (JPEG) or clip (video), at most one of each."""

    __tablename__ = "incident_media"

    incident_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("incidents.id", ondelete="CASCADE"),
                                             primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(ID_LENGTH))
    data: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (CheckConstraint("kind IN ('snapshot', 'clip')", name="kind"),)
