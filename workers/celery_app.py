"""The worker's Celery app, built on first use: `worker_app()`, or the module attribute `app` that
`celery -A workers.celery_app` looks up (PEP 562 `__getattr__`), so importing this module builds nothing and
reads no settings.

The tasks (`workers.assess`, `workers.results`) are `shared_task`s: they bind to this app when the worker imports
them (Celery's `imports` setting). Producers never use this module: they build
:func:`traffic_celery.broker.config.producer_app` and send tasks by name.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from traffic_celery.broker.config import FastReprAMQP, config_for, count_publishes
from traffic_celery.logs import install_secret_filter
from traffic_celery.settings import get_settings


@functools.lru_cache(maxsize=1)
def worker_app() -> Celery:
    """The worker's app (the current app of the process), configured from the process's settings, with the
    worker's consumer steps (events through Redis, presence) and the task counters connected."""
    from workers import events, task_metrics  # noqa: F401  (task_metrics connects Celery's signals)

    count_publishes()  # retries and linked callbacks are published by the worker's processes
    celery = Celery("traffic_celery", set_as_current=True, amqp=FastReprAMQP)
    celery.conf.update(config_for(get_settings()))
    events.install(celery)
    return celery


def __getattr__(name: str) -> Any:
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@after_setup_logger.connect  # type: ignore[untyped-decorator]  # celery is untyped
@after_setup_task_logger.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _mask_secrets(logger: Any, **_kwargs: Any) -> None:
    install_secret_filter(logger)
