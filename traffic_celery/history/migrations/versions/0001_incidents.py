"""The incident history: incidents, their zones, verdicts and media.

Written by hand to match `traffic_celery.history.models` (a test compares the two).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 128


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(ID), nullable=False),
        sa.Column("camera_id", sa.String(ID), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("severity_rank", sa.Integer(), nullable=False),
        sa.Column("opened_by", sa.String(32), nullable=False),
        sa.Column("group_id", sa.String(ID), nullable=True),
        sa.Column("conflict_type", sa.String(32), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("track_ids", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.CheckConstraint("severity_rank BETWEEN 1 AND 3", name=op.f("ck_incidents_severity_rank")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index("ix_incidents_camera_id_started_at", "incidents", ["camera_id", "started_at"])
    op.create_index("ix_incidents_started_at", "incidents", ["started_at"])
    op.create_index("ix_incidents_severity_rank", "incidents", ["severity_rank"])

    op.create_table(
        "incident_zones",
        sa.Column("incident_id", sa.String(ID), nullable=False),
        sa.Column("zone", sa.String(ID), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE",
                                name=op.f("fk_incident_zones_incident_id_incidents")),
        sa.PrimaryKeyConstraint("incident_id", "zone", name=op.f("pk_incident_zones")),
    )
    op.create_index("ix_incident_zones_zone", "incident_zones", ["zone"])

    op.create_table(
        "verdicts",
        sa.Column("task_id", sa.String(ID), nullable=False),
        sa.Column("incident_id", sa.String(ID), nullable=False),
        sa.Column("risk_level", sa.String(16), nullable=False),
        sa.Column("risk_types", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("llm_model", sa.String(ID), nullable=False),
        sa.Column("api_key_id", sa.String(ID), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE",
                                name=op.f("fk_verdicts_incident_id_incidents")),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_verdicts")),
    )
    op.create_index("ix_verdicts_incident_id", "verdicts", ["incident_id"])

    op.create_table(
        "incident_media",
        sa.Column("incident_id", sa.String(ID), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(ID), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("kind IN ('snapshot', 'clip')", name=op.f("ck_incident_media_kind")),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"], ondelete="CASCADE",
                                name=op.f("fk_incident_media_incident_id_incidents")),
        sa.PrimaryKeyConstraint("incident_id", "kind", name=op.f("pk_incident_media")),
    )


def downgrade() -> None:
    op.drop_table("incident_media")
    op.drop_index("ix_verdicts_incident_id", table_name="verdicts")
    op.drop_table("verdicts")
    op.drop_index("ix_incident_zones_zone", table_name="incident_zones")
    op.drop_table("incident_zones")
    op.drop_index("ix_incidents_severity_rank", table_name="incidents")
    op.drop_index("ix_incidents_started_at", table_name="incidents")
    op.drop_index("ix_incidents_camera_id_started_at", table_name="incidents")
    op.drop_table("incidents")
