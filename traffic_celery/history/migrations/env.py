"""Alembic's environment for the incident history, run by `History.migrate()` (and by `alembic` itself if someone
points a config at this folder).

`History.migrate()` passes an open connection, already inside the transaction that holds the migration lock, in
`config.attributes["connection"]`; the migrations run on it and commit with it. Without one (the command line), an
engine is made from the config's `sqlalchemy.url`.
"""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import Connection, create_engine

from traffic_celery.history.models import Base

logger = logging.getLogger(__name__)

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url in the Alembic config (History.migrate() does)")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
