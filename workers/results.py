"""Where an assessment becomes visible: :func:`record` keeps the camera's latest assessment and alert history
and publishes the `risk_assessment` event that every web process relays to its WebSocket clients, once per task
id (one Lua script: a redelivered task publishes nothing twice).

`assess_group` calls :func:`record` itself, in the LLM worker, right after the reply is validated. Until this
version a callback task (`workers.results.on_assessment`, queue `results`) did it, linked to every
`assess_group`: a second Celery task per assessment (publish, receive, ack, events, a stored result) that cost
a third of the whole path's CPU (`bench/load.py`, `bench/path_ab.py`). The callback stays registered, so tasks
sent with it linked by an older producer still end up stored once.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from traffic_celery import store
from traffic_celery.protocol import Assessment
from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments
from workers.context import redis_client


# ignore_result: the callback returns nothing and nobody reads its state, so Celery stores no result for it (a
# GET, a SET and a PUBLISH per assessment saved); its monitoring events still go to Flower
@shared_task(name="workers.results.on_assessment", acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]  # celery is untyped
def on_assessment(result: dict[str, Any]) -> None:
    """Store and publish the assessment an older `assess_group` returned (validated here, where it is read)."""
    record(Assessment.model_validate(result))


def record(assessment: Assessment) -> bool:
    """Store and publish `assessment` (stamped `assessedAt` now), serialised once for the store and the event
    (`store.store_assessment`); False if this task's assessment was recorded already. Raises
    `redis.RedisError` when Redis cannot be reached."""
    assessed_at = time.time()
    assessment = assessment.model_copy(update={"assessedAt": assessed_at})
    if not store.store_assessment(redis_client(), assessment, snapshot_ttl=get_settings().snapshot_ttl):
        return False
    metrics = instruments.get()
    metrics.assessments.labels(assessment.riskLevel).inc()
    metrics.assessment_latency.observe(max(0.0, assessed_at - assessment.frameTimestamp))
    return True
