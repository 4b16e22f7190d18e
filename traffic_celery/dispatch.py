"""Puts an assessment job on Celery: `assess_group` on the queue of the key the router picks, with
`on_assessment` linked on the `results` queue. Tasks are sent by name, so the capture side never imports them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery

from . import names
from .router import Router

logger = logging.getLogger(__name__)

ASSESS_TASK = "workers.assess.assess_group"
CALLBACK_TASK = "workers.results.on_assessment"


class Dispatcher:
    def __init__(self, app: Celery, router: Router):
        self._app, self._router = app, router

    def __call__(self, job: dict[str, Any]) -> str:
        """Enqueue one job; returns the task id."""
        key = self._router.pick()
        callback = self._app.signature(CALLBACK_TASK, queue=names.RESULTS_QUEUE)
        job = {**job, "keyId": key.id, "enqueuedAt": time.time(), "failures": 0, "reroutes": 0}
        result = self._app.send_task(ASSESS_TASK, args=[job], queue=key.queue, link=callback)
        logger.debug("enqueued %s for camera %s group %s on %s", result.id, job["cameraId"], job["groupId"],
                     key.queue)
        return result.id
