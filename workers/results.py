"""`workers.results.on_assessment`: the callback linked to every `assess_group` (queue `results`).

It keeps the camera's latest assessment and alert history and publishes the `risk_assessment` event that every
web process relays to its WebSocket clients, once per task id: a redelivered callback publishes nothing twice.
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
    """Store and publish the assessment `assess_group` returned (validated here, where it is read, and
    serialised once for the store and the event: `store.store_assessment`)."""
    assessed_at = time.time()
    assessment = Assessment.model_validate({**result, "assessedAt": assessed_at})
    if store.store_assessment(redis_client(), assessment, snapshot_ttl=get_settings().snapshot_ttl):
        metrics = instruments.get()
        metrics.assessments.labels(assessment.riskLevel).inc()
        metrics.assessment_latency.observe(max(0.0, assessed_at - assessment.frameTimestamp))
