"""`workers.webhooks.deliver`: one webhook request, on the `webhooks` queue, with retries and a dead letter.

The task's arguments are the target's *name*, the event and the incident: never the URL or the secret (task
arguments show in Flower and in logs); the worker reads those from `TC_WEBHOOKS_FILE`. Each attempt is signed
afresh (a new timestamp), with the same `X-TC-Delivery` id (the task id).

- 2xx: delivered.
- 5xx, 429, a timeout or a refused connection: retried with exponential backoff (`TC_WEBHOOK_BACKOFF` x 2^n,
  at most `TC_WEBHOOK_BACKOFF_MAX` seconds, `TC_WEBHOOK_MAX_RETRIES` times); after the last retry, dead-lettered.
- any other answer (400, 401, 404, ...): the receiver refuses it and will refuse it again: dead-lettered at once.

A dead letter is an entry of the Redis stream `tc:webhooks:dead` (target name, event, incident, camera, why,
attempts; capped), counted in `tc:stats:webhooks` and `tc_webhook_deliveries_total{outcome="dead"}`.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import requests
from celery import Task, shared_task

from traffic_celery import names
from traffic_celery.notify import webhooks
from traffic_celery.protocol import Incident
from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments
from workers.context import redis_client

logger = logging.getLogger(__name__)

DEAD_LETTERS_KEPT = 1000


class RetryableDelivery(Exception):
    """A delivery that may succeed later (5xx, 429, timeout, connection): its message names no URL."""


@functools.lru_cache(maxsize=1)
def _session() -> requests.Session:
    return requests.Session()  # keep-alive to the receivers, per worker process


def _targets() -> dict[str, webhooks.WebhookTarget]:
    return webhooks.load_targets(get_settings().webhooks_file)


def _outcome(target: str, outcome: str) -> None:
    instruments.get().webhook_deliveries.labels(target, outcome).inc()
    try:
        webhooks.count(redis_client(), target, outcome)
    except Exception:  # counting must not turn a delivery into a failure
        logger.warning("cannot count the %s webhook delivery to %s", outcome, target, exc_info=True)


def _dead_letter(target: str, event: str, incident: Incident, reason: str, attempts: int) -> None:
    logger.warning("webhook to %s for incident %s (%s) dead-lettered after %d attempt(s): %s", target,
                   incident.incidentId, event, attempts, reason)
    redis_client().xadd(names.WEBHOOK_DEAD, {"target": target, "event": event, "incidentId": incident.incidentId,
                                             "cameraId": incident.cameraId, "reason": reason,
                                             "attempts": attempts, "at": time.time()},
                        maxlen=DEAD_LETTERS_KEPT, approximate=True)
    _outcome(target, "dead")


@shared_task(bind=True, name="workers.webhooks.deliver", max_retries=None, acks_late=True)  # type: ignore[untyped-decorator]  # celery is untyped
def deliver(self: Task, target_name: str, event: str, incident_data: dict[str, Any]) -> str:
    settings = get_settings()
    incident = Incident.model_validate(incident_data)
    attempts = self.request.retries + 1
    target = _targets().get(target_name)
    if target is None:
        _dead_letter(target_name, event, incident, "the target is no longer in TC_WEBHOOKS_FILE", attempts)
        return "dead"
    payload = webhooks.body(target, incident)
    try:
        response = _session().post(target.url.get_secret_value(), data=payload, timeout=target.timeout,
                                   headers=webhooks.headers(target, payload, event, self.request.id or "?"))
        if 200 <= response.status_code < 300:
            _outcome(target.name, "delivered")
            logger.info("webhook to %s for incident %s (%s) delivered (%d) on attempt %d", target.name,
                        incident.incidentId, event, response.status_code, attempts)
            return "delivered"
        if response.status_code < 500 and response.status_code != 429:
            _dead_letter(target.name, event, incident, f"the receiver answered {response.status_code}", attempts)
            return "dead"
        failure = RetryableDelivery(f"the receiver answered {response.status_code}")
    except requests.Timeout:
        failure = RetryableDelivery(f"no answer within {target.timeout:g}s")
    except requests.ConnectionError:
        failure = RetryableDelivery("cannot connect to the receiver")
    if self.request.retries >= settings.webhook_max_retries:
        _dead_letter(target.name, event, incident, str(failure), attempts)
        return "dead"
    countdown = min(settings.webhook_backoff_max, settings.webhook_backoff * 2 ** self.request.retries)
    _outcome(target.name, "retried")
    logger.info("webhook to %s for incident %s (%s): %s; retry %d/%d in %.1fs", target.name, incident.incidentId,
                event, failure, attempts, settings.webhook_max_retries, countdown)
    raise self.retry(countdown=countdown, exc=failure)
