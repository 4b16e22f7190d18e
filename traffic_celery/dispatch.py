"""Puts an assessment job on Celery: `assess_group` on the queue of the key the router picks, with
`on_assessment` linked on the `results` queue. Tasks are sent by name, so the capture side never imports them.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery

from . import names
from .keys import KeyPool
from .router import pick_key

logger = logging.getLogger(__name__)

ASSESS_TASK = "workers.assess.assess_group"
CALLBACK_TASK = "workers.results.on_assessment"


class Dispatcher:
    def __init__(self, app: Celery, r: redis.Redis, pool: KeyPool):
        self._app, self._redis, self._pool = app, r, pool

    def __call__(self, job: dict[str, Any]) -> str:
        """Enqueue one job; returns the task id."""
        key = pick_key(self._redis, self._pool)
        callback = self._app.signature(CALLBACK_TASK, queue=names.RESULTS_QUEUE)
        result = self._app.send_task(ASSESS_TASK, args=[{**job, "keyId": key.id}], queue=key.queue,
                                     link=callback)
        logger.debug("enqueued %s for camera %s group %s on %s", result.id, job["cameraId"], job["groupId"],
                     key.queue)
        return result.id
