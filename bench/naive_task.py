"""The baseline of `bench/dispatch.py`: what Celery offers without the project's limiter.

`assess_naive` calls the provider with the key it was given, under Celery's own `rate_limit` (set at run time
with `app.control.rate_limit`, a per-worker token bucket), and retries a 429 on the same key after
`Retry-After`. Loaded into the benchmark's workers with `--include bench.naive_task`; never used by the system.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from traffic_celery import store
from traffic_celery.llm import client as llm_client
from traffic_celery.llm import schema
from traffic_celery.settings import get_settings
from workers.context import key_pool, redis_client


@shared_task(bind=True, name="bench.naive_task.assess_naive", max_retries=None, acks_late=True)
def assess_naive(self, job: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    key = key_pool().get(job["keyId"])
    jpeg = store.load_image(redis_client(), job["imageKey"])
    messages = schema.build_messages(job["groupIndex"], job["memberTrackIds"], job["features"], jpeg)
    started = job.get("startedAt") or time.time()
    try:
        completion = llm_client.chat_completion(key, settings.llm_base_url, settings.llm_model, messages,
                                                settings.llm_timeout)
        result = schema.parse_reply(completion.text, job["groupIndex"])
    except llm_client.RateLimited as exc:
        raise self.retry(args=[{**job, "startedAt": started}], countdown=exc.retry_after or 1.0) from None
    except (llm_client.LLMCallError, schema.ReplyError):
        raise self.retry(args=[{**job, "startedAt": started}], countdown=1.0) from None
    return {"cameraId": job["cameraId"], "groupId": job["groupId"], "groupIndex": job["groupIndex"],
            "taskId": self.request.id, "riskLevel": result.riskLevel, "riskTypes": result.riskTypes,
            "description": result.description, "confidence": result.confidence,
            "dangerObjectIds": result.triggerObjectIds, "llmLatency": completion.latency,
            "llmModel": completion.model, "apiKeyId": key.id, "frameTimestamp": job["frameTimestamp"],
            "queueWait": started - job["enqueuedAt"]}
