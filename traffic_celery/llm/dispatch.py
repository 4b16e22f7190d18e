"""Puts an assessment job on Celery: `assess_group` on the queue of the key the router picks; the task stores
and publishes its assessment itself (no callback task). Tasks are sent by name, so the capture side never imports
them.

The LLM budget (:mod:`traffic_celery.llm.budget`) decides two things here: the job's priority (`Job.priority`,
sent as Celery's `priority`, so on Redis the most urgent task of all queues is the next one a worker takes; on
Kafka, which has none, the topic stays FIFO), and whether a `reassess` job is shed because its key is saturated:
then nothing is enqueued and :class:`~traffic_celery.llm.budget.Shed` is raised (already counted).

On a broker that carries no monitoring events (Kafka), :class:`SentEvents` sends each task's `task-sent` event
through `TC_EVENTS_URL`, where the workers send theirs (`workers/events.py`): Flower then lists a task as sent,
with its queue, as it does on Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu.utils.encoding import safe_repr

from traffic_celery.llm import budget
from traffic_celery.llm.router import Router
from traffic_celery.protocol import Job
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

ASSESS_TASK = "workers.assess.assess_group"
CALLBACK_TASK = "workers.results.on_assessment"  # the callback older producers linked (still consumed on `results`)


class SentEvents:
    """Celery's `task-sent` event, with the fields Celery gives it, on its own connection (thread-safe)."""

    def __init__(self, app: Celery, url: str):
        self._app, self._url = app, url
        self._lock = threading.Lock()
        self._dispatcher: Any = None

    def send(self, task_id: str, name: str, args: list[Any], queue: str) -> None:
        """Send the event; a failure is logged, never raised: monitoring must not cost a task."""
        with self._lock:
            try:
                if self._dispatcher is None:
                    self._dispatcher = self._app.events.Dispatcher(self._app.connection_for_write(url=self._url))
                args_repr = safe_repr(args)  # type: ignore[no-untyped-call]  # kombu is untyped
                self._dispatcher.send("task-sent", uuid=task_id, root_id=task_id, parent_id=None, name=name,
                                      args=args_repr, kwargs="{}", retries=0, eta=None, expires=None,
                                      queue=queue, exchange=queue, routing_key=queue)
            except Exception as exc:  # kombu raises transport-specific errors
                logger.warning("cannot send the task-sent event of %s (Flower will show it from 'received'): %s",
                               task_id, exc)
                self.close()

    def close(self) -> None:
        if self._dispatcher is not None:
            try:
                self._dispatcher.connection.close()
            except Exception:
                pass
            self._dispatcher = None


def sent_events(app: Celery, settings: Settings) -> SentEvents | None:
    """`SentEvents` when events do not travel on the broker, else None (Celery sends `task-sent` itself)."""
    if settings.events_on_broker:
        return None
    return SentEvents(app, settings.effective_events_url)


class Dispatcher:
    """`shed_wait`: the expected wait above which `reassess` jobs are shed (default `TC_BUDGET_SHED_WAIT`)."""

    def __init__(self, app: Celery, router: Router, events: SentEvents | None = None,
                 shed_wait: float | None = None):
        self._app, self._router, self._events = app, router, events
        self._shed_wait = shed_wait
        transport = app.conf.broker_transport or str(app.conf.broker_url or "redis://").split("://", 1)[0]
        self._transport = str(transport)

    def __call__(self, job: Job | Mapping[str, Any]) -> str:
        """Enqueue one job (a :class:`~traffic_celery.protocol.Job`, or its fields, validated here) on the queue
        of the key the router picks, at the job's priority; returns the task id. A priority given with the job is
        kept, else the budget's (:func:`~traffic_celery.llm.budget.priority_of`). Raises
        :class:`~traffic_celery.llm.budget.Shed` (counted, nothing enqueued) when the budget sheds the job."""
        base = job if isinstance(job, Job) else Job.model_validate(job)
        load = self._router.pick_load()
        key = load.key
        priority = base.priority if "priority" in base.model_fields_set else budget.priority_of(base)
        if base.reason == budget.REASSESS:  # only these are ever shed: the depth the router just read
            wait = (budget.expected_wait(load.queued, self._router.limiter.interval(key))
                    if self._router.reads_queue_depths else None)
            shed = budget.should_shed(base, wait, self._shed_wait)
            if shed is not None:
                budget.count_shed(self._router._redis, shed)  # the app's Redis, as the router's
                logger.debug("shed %s job of camera %s group %s: key %s expects a %.1fs wait", base.reason,
                             base.cameraId, base.groupId, key.id, wait or 0.0)
                raise budget.Shed(shed, key.id, wait)
        wire = base.moved(keyId=key.id, enqueuedAt=time.time(), failures=0, reroutes=0,
                          priority=priority).to_wire()
        result = self._app.send_task(ASSESS_TASK, args=[wire], queue=key.queue,
                                     priority=budget.celery_priority(priority, self._transport))
        if self._events is not None:
            self._events.send(result.id, ASSESS_TASK, [wire], key.queue)
        logger.debug("enqueued %s (priority %d) for camera %s group %s on %s", result.id, priority, base.cameraId,
                     base.groupId, key.queue)
        return str(result.id)
