"""The worker's consumer: monitoring events through `TC_EVENTS_URL`, and a presence key in Redis.

- **Events.** Celery's `Events` step sends task and worker events (Flower's only source) on the connection that
  `Consumer.connection_for_write` opens, by default the broker. Kafka has no fanout exchange, so kombu's Kafka
  transport drops them. This consumer opens that connection on `TC_EVENTS_URL` instead (the broker when it is
  Redis, else the Redis of `TC_REDIS_URL`): Flower, started by `python -m workers.flower` on that same URL, sees
  every task on either broker. Only the `Events` step calls this method (Celery 5.7).
- **Presence.** Every `PRESENCE_INTERVAL` seconds the worker writes `tc:worker:<hostname>` (its queues and pid,
  expiring after three intervals). `/api/health` reads these keys: Celery's `inspect().ping()` is a broadcast,
  and a broadcast needs the same fanout that Kafka lacks.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import redis
from celery import bootsteps
from celery.worker.consumer import Consumer as CeleryConsumer

from traffic_celery import names
from traffic_celery.settings import get_settings
from workers.context import redis_client

logger = logging.getLogger(__name__)

PRESENCE_INTERVAL = 2.0


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery is untyped
    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        return super().connection_for_write(url=url or get_settings().effective_events_url, heartbeat=heartbeat)


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

