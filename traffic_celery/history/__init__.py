"""The incident history: incidents, their verdicts, zones, snapshots and clips in a SQL database.

It owns the schema (`models`, kept in step with the Alembic migrations in `migrations/`) and the one class the rest of
the system uses to read and write it (:class:`History`, in `store`). SQLite (the default, a file under `.run/`) and
PostgreSQL (`TC_DATABASE_URL=postgresql+psycopg://...`) are both supported with the same schema.
"""

from traffic_celery.history.store import History

__all__ = ["History"]
