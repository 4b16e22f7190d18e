"""`workers.assess.assess_group`: ask the vision LLM about one traffic group's crop.

The task's argument is a JSON job (camera, group, image key, features, key *id*); the secret is resolved here,
so it never appears in the broker, the result backend or Flower. Failures:

- 429: retried after the provider's `Retry-After` (issue 3 moves it to another key's queue instead);
- 5xx, timeouts, a reply that does not follow the schema: retried with exponential backoff and jitter;
- 401/403, a 4xx, a crop that expired, or the last retry spent: dead-lettered in `tc:dlq` with the reason and an
  `error` event to the camera's clients; the task then fails (the linked callback does not run).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from traffic_celery import assessment, llm_client, results
from traffic_celery.settings import get_settings
from workers.celery_app import app
from workers.context import key_pool, redis_client

logger = logging.getLogger(__name__)


class AssessmentFailed(RuntimeError):
    """The assessment was given up; the reason is in the dead-letter store and was sent to the clients."""


def _give_up(task_id: str, job: dict[str, Any], reason: str) -> AssessmentFailed:
    r = redis_client()
    results.dead_letter(r, task_id, reason, job)
    results.publish(r, job["cameraId"], "error", {
        "code": "assessment_failed", "message": reason, "cameraId": job["cameraId"],
        "groupId": job["groupId"], "taskId": task_id})
    return AssessmentFailed(reason)


def _backoff(retries: int) -> float:
    return min(60.0, 2.0 ** retries) * random.uniform(0.5, 1.0)


@app.task(bind=True, max_retries=None, acks_late=True)
def assess_group(self, job: dict[str, Any]) -> dict[str, Any]:
    """Call the LLM for one group and return the assessment in the shape of the `risk_assessment` event."""
    settings = get_settings()
    task_id = self.request.id
    key = key_pool().get(job["keyId"])
    jpeg = results.load_image(redis_client(), job["imageKey"])
    if jpeg is None:
        raise _give_up(task_id, job, f"crop {job['imageKey']} expired before the assessment; "
                                     f"raise TC_IMAGE_TTL or add workers")
    messages = assessment.build_messages(job["groupIndex"], job["memberTrackIds"], job["features"], jpeg)
    try:
        completion = llm_client.chat_completion(key, settings.llm_base_url, settings.llm_model, messages,
                                                settings.llm_timeout)
        result = assessment.parse_reply(completion.text, job["groupIndex"])
    except (llm_client.LLMCallError, assessment.ReplyError) as exc:
        retryable = getattr(exc, "retryable", True)
        if not retryable or self.request.retries >= settings.llm_max_retries:
            raise _give_up(task_id, job, f"{exc} (after {self.request.retries + 1} attempts)") from None
        countdown = exc.retry_after if isinstance(exc, llm_client.RateLimited) and exc.retry_after is not None \
            else _backoff(self.request.retries)
        logger.warning("task %s on key %s: %s; retrying in %.1fs", task_id, key.id, exc, countdown)
        raise self.retry(countdown=countdown, exc=exc)
    return {
        "cameraId": job["cameraId"], "groupId": job["groupId"], "groupIndex": job["groupIndex"],
        "taskId": task_id, "riskLevel": result.riskLevel, "riskTypes": result.riskTypes,
        "description": result.description, "confidence": result.confidence,
        "dangerObjectIds": result.triggerObjectIds, "llmLatency": round(completion.latency, 4),
        "llmModel": completion.model, "apiKeyId": key.id, "frameTimestamp": job["frameTimestamp"],
        "imageKey": job["imageKey"],
    }
