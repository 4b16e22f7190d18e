"""Task counters from Celery's signals, in every process that has the app: published (`after_task_publish`, connected by
`traffic_celery.broker.config.count_publishes` in producers and workers alike:
producers, retries and linked callbacks alike), started, succeeded, failed, retried, and run time, each by queue
and task. Also the worker's side of :mod:`traffic_celery.telemetry.instruments`: multiprocess mode set up in the main
process before the pool forks, its own `/metrics` on `TC_METRICS_PORT`, and a pool child's live gauges dropped
when it exits.
"""

from __future__ import annotations

import time
from typing import Any

from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_shutdown,
)

from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments

_started: dict[str, float] = {}


def _queue(task: Any) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key") or "unknown")


@worker_init.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _on_worker_init(**_kwargs: Any) -> None:
    settings = get_settings()
    instruments.configure(settings)
    instruments.serve(settings)  # the figures kept in Redis (per key, scheduler) are the web tier's to serve


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _on_child_exit(pid: int, **_kwargs: Any) -> None:
    instruments.process_exited(pid)


@task_prerun.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _on_start(task_id: str = "", task: Any = None, **_kwargs: Any) -> None:
    _started[task_id] = time.monotonic()
    instruments.get().tasks_started.labels(_queue(task), task.name).inc()


@task_postrun.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _on_end(task_id: str = "", task: Any = None, state: str = "", **_kwargs: Any) -> None:
    metrics = instruments.get()
    started = _started.pop(task_id, None)
    if started is not None:
        metrics.task_seconds.labels(task.name).observe(time.monotonic() - started)
    if state == "SUCCESS":
        metrics.tasks_succeeded.labels(_queue(task), task.name).inc()


@task_failure.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _on_failure(sender: Any = None, **_kwargs: Any) -> None:
    instruments.get().tasks_failed.labels(_queue(sender), sender.name).inc()


@task_retry.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _on_retry(sender: Any = None, request: Any = None, **_kwargs: Any) -> None:
    info = getattr(request, "delivery_info", None) or {}
    instruments.get().tasks_retried.labels(str(info.get("routing_key") or "unknown"), sender.name).inc()
