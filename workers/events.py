"""The worker's consumer: monitoring events through `TC_EVENTS_URL`, and a presence key in Redis.

- **Events.** Celery's `Events` step sends task and worker events (Flower's only source) on the connection that
  `Consumer.connection_for_write` opens, by default the broker. Kafka has no fanout exchange, so kombu's Kafka
  transport drops them. This consumer opens that connection on `TC_EVENTS_URL` instead (the broker when it is
  Redis, else the Redis of `TC_REDIS_URL`): Flower, started by `python -m workers.flower` on that same URL, sees
  every task on either broker. Only the `Events` step calls this method (Celery 5.7).
- **Batched task events.** Celery buffers a worker's task events (received, started, succeeded...) and
  publishes the buffer on the event loop's next turn, which under load meant one publish per event or two, a
  fifth of the callback worker's CPU. This consumer publishes the buffer at most every
  `EVENT_FLUSH_INTERVAL` (50 ms; Celery still publishes at once when 24 are waiting), so Flower sees a task's
  events at most that much later, in fewer, larger messages. The buffer is flushed when the consumer stops.
- **Presence.** Every `PRESENCE_INTERVAL` seconds the worker writes `tc:worker:<hostname>` (its queues and pid,
  expiring after three intervals). `/api/health` reads these keys: Celery's `inspect().ping()` is a broadcast,
  and a broadcast needs the same fanout that Kafka lacks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker.consumer import Consumer as CeleryConsumer

from traffic_celery import names
from traffic_celery.settings import get_settings
from workers.context import redis_client

logger = logging.getLogger(__name__)

PRESENCE_INTERVAL = 2.0
EVENT_FLUSH_INTERVAL = 0.05  # seconds between two publishes of the buffered task events


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery is untyped
    _events_flushed_at = 0.0
    _events_flush_due = 0.0  # when the scheduled flush runs (0: none scheduled)

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        return super().connection_for_write(url=url or get_settings().effective_events_url, heartbeat=heartbeat)

    def _flush_events(self) -> None:
        """Publish the buffered task events, at most every EVENT_FLUSH_INTERVAL: sooner, a timer on the event
        loop does it when the interval is over. Runs in the event loop's thread (Celery calls it from there)."""
        now = time.monotonic()
        wait = self._events_flushed_at + EVENT_FLUSH_INTERVAL - now
        if wait > 0 and self.hub is not None:
            # one timer at a time; one that should have run a second ago went with an old event loop
            if not self._events_flush_due or self._events_flush_due < now - 1.0:
                self._events_flush_due = now + wait
                self.hub.call_later(wait, self._flush_events_due_now)
            return
        self._events_flushed_at = now
        super()._flush_events()

    def _flush_events_due_now(self) -> None:
        self._events_flush_due = 0.0
        self._flush_events()

    def _flush_events_now(self) -> None:
        try:
            super()._flush_events()
        except Exception as exc:  # the broker may be what is going away
            logger.debug("could not publish the buffered task events: %s", exc)

    def stop(self) -> None:
        self._flush_events_now()
        super().stop()

    def shutdown(self) -> None:
        self._flush_events_now()
        super().shutdown()


class Presence(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Keeps `tc:worker:<hostname>` alive while the worker consumes its queues."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any):
        super().__init__(c, **kwargs)
        self._timer: Any = None

    def start(self, c: Any) -> None:
        self._key = names.worker_key(c.hostname)
        self._doc = json.dumps({"hostname": c.hostname, "pid": os.getpid(),
                                "queues": sorted(q.name for q in c.task_consumer.queues)})
        self._beat()
        self._timer = c.timer.call_repeatedly(PRESENCE_INTERVAL, self._beat)

    def _beat(self) -> None:
        try:
            redis_client().set(self._key, self._doc, px=int(3000 * PRESENCE_INTERVAL))
        except redis.RedisError as exc:
            logger.warning("cannot write the worker's presence key %s: %s", self._key, exc)

    def stop(self, c: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            try:
                redis_client().delete(self._key)
            except redis.RedisError:
                pass  # it expires by itself

    shutdown = stop


def install(app: Any) -> None:
    """Add the presence step to the app's worker consumer."""
    app.steps["consumer"].add(Presence)

