"""Reports: the start-time index of the incidents covers the counts per bucket.

`ix_incidents_started_at` (started_at) becomes `ix_incidents_started_at_covering` (started_at, camera_id, severity,
conflict_type). It starts with the same column, so every query that used the old index uses the new one (periods,
newest-first lists); and the counts per bucket and severity of every camera (the chart of the page's Reports view,
`traffic_celery.history.reports`) are read from the index alone, without the incidents' rows and their JSON. Measured
by `bench/reports.py` (30 days of 20 cameras, 100 000 incidents, SQLite). Written by hand to match `models.py`.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_incidents_started_at_covering", "incidents",
                    ["started_at", "camera_id", "severity", "conflict_type"])
    op.drop_index("ix_incidents_started_at", table_name="incidents")


def downgrade() -> None:
    op.create_index("ix_incidents_started_at", "incidents", ["started_at"])
    op.drop_index("ix_incidents_started_at_covering", table_name="incidents")
