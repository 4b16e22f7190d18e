"""`workers.assess.assess_group`: ask the vision LLM about one traffic group's crop, within the key's limits.

The argument is a JSON job (camera, group, image key, features, key *id*, counters); the secret is resolved here,
so it never appears in the broker, the result backend or Flower. The task stores and publishes the assessment
itself (:func:`workers.results.record`: one Lua script, once per task id), so an assessment costs one Celery task,
not a task and a callback; Celery keeps no result for it (`ignore_result`: nobody reads it, the stored assessment
is the result), and the task's return value is a one-line summary that Flower shows. Every move is a Celery retry
of the same task id, so clients see one assessment per task whatever happened on the way:

- no slot on the key within `TC_LIMIT_MAX_WAIT`: moved to the key with the smallest expected wait, or retried
  on the same queue when its slot comes if that key is the best;
- the key is cooling down or disabled: moved at once to the queue of the key the router picks;
- 429: the key cools down (`Retry-After`, else 10 s doubling to 120 s) and the task moves to another key at once;
- 401/403: the key is disabled, an `error` event says so, and the task moves to another key;
- 5xx, timeouts, a reply outside the schema: retried with exponential backoff and jitter, up to
  `TC_LLM_MAX_RETRIES`; then, like any other 4xx or an expired crop, the task goes to the dead-letter store
  `tc:dlq` with its reason, an `error` event reaches the camera's clients, and the task fails;
- Redis unreachable when the assessment is to be stored: retried like a failed call (the call is made again).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded

from traffic_celery import store
from traffic_celery.llm import budget, schema
from traffic_celery.llm import client as llm_client
from traffic_celery.llm.keys import ApiKey
from traffic_celery.llm.router import NoKeyAvailable
from traffic_celery.protocol import Assessment, ErrorCode, ErrorEvent, EventType, Job
from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments
from workers.context import key_pool, limiter, redis_client, router
from workers.results import record

logger = logging.getLogger(__name__)


class AssessmentFailed(RuntimeError):
    """The assessment was given up; the reason is in the dead-letter store and was sent to the clients."""


def _give_up(task_id: str, job: Job, reason: str) -> AssessmentFailed:
    r = redis_client()
    store.dead_letter(r, task_id, reason, job.to_wire())
    store.publish(r, job.cameraId, EventType.ERROR, ErrorEvent(
        code=ErrorCode.ASSESSMENT_FAILED, message=reason, cameraId=job.cameraId, groupId=job.groupId,
        taskId=task_id))
    return AssessmentFailed(reason)


def _backoff(failures: int) -> float:
    return min(60.0, 2.0 ** failures) * random.uniform(0.5, 1.0)


def _retry_later(task: Task, job: Job, failures: int, started_at: float, why: str) -> Retry:
    """Retry the task on its queue after a failed attempt (`failures` so far), with exponential backoff and
    jitter; the call is made again."""
    countdown = _backoff(failures)
    logger.warning("task %s %s; retrying in %.1fs", task.request.id, why, countdown)
    retried = job.moved(failures=failures, startedAt=started_at)
    return task.retry(args=[retried.to_wire()], countdown=countdown, max_retries=None)


def _retry_on(task: Task, job: Job, key: ApiKey, countdown: float, counter: str) -> Retry:
    """Retry the task on `key`'s queue: the same task id and linked callback, the move counted in `counter`."""
    new_job = job.moved(keyId=key.id, **{counter: getattr(job, counter) + 1})
    return task.retry(args=[new_job.to_wire()], queue=key.queue, countdown=countdown, max_retries=None)


def _move(task: Task, job: Job, away_from: ApiKey, why: str) -> Retry:
    """Retry the task at once on another key's queue (the same key only if it is the only usable one)."""
    if job.reroutes >= get_settings().max_reroutes:
        raise _give_up(task.request.id, job, f"moved between keys {job.reroutes} times ({why}); "
                                             f"add keys or raise their limits")
    try:
        target = router().pick(exclude={away_from.id})
    except NoKeyAvailable as exc:
        raise _give_up(task.request.id, job, str(exc)) from None
    countdown = 0.0
    if target.id == away_from.id:  # nowhere else to go: wait for this key
        countdown = max(0.05, limiter().state(target)["cooldownLeft"])
    logger.info("task %s: %s; moving from key %s to %s", task.request.id, why, away_from.id, target.id)
    return _retry_on(task, job, target, countdown, "reroutes")


def _move_or_wait(task: Task, job: Job, key: ApiKey, wait: float) -> Retry:
    """The key's next slot is beyond TC_LIMIT_MAX_WAIT. Move the task to the key with the smallest expected
    wait if that is another key; else come back when this key's slot is near. Workers fetch from every key's
    queue in turn, so without this the slow keys' tasks would hold worker slots the fast keys need."""
    target = router().pick()
    if target.id != key.id:  # normal operation, not a fault: not counted against TC_MAX_REROUTES
        raise _retry_on(task, job, target, 0.0, "moves")
    raise task.retry(countdown=wait, max_retries=None)


def _shed_if_stale(task: Task, job: Job) -> None:
    """A `reassess` job that waited in its queue longer than `TC_BUDGET_SHED_WAIT` (more urgent work went first)
    is shed: counted (`shed:stale`), no call, no result. `Ignore` acknowledges the message (acks_late or not:
    Celery's worker acks an ignored task, so it is not redelivered), stores no state and skips the linked
    `on_assessment`, so clients see nothing for it (`traffic_celery.llm.budget`)."""
    reason = budget.is_stale(job)
    if reason is None:
        return
    budget.count_shed(redis_client(), reason)
    logger.info("task %s: shed (%s): a reassess job of camera %s group %s waited %.1fs in its queue",
                task.request.id, reason, job.cameraId, job.groupId, time.time() - job.enqueuedAt)
    raise Ignore()


@shared_task(bind=True, name="workers.assess.assess_group", max_retries=None, acks_late=True,  # type: ignore[untyped-decorator]  # celery is untyped
             ignore_result=True)
def assess_group(self: Task, raw_job: dict[str, Any]) -> str:
    """Call the LLM for one group, store and publish the :class:`~traffic_celery.protocol.Assessment`; returns
    a summary for Flower ("high: a pedestrian steps out…", or "already stored" for a redelivered task)."""
    settings = get_settings()
    task_id = self.request.id
    job = Job.model_validate(raw_job)  # a malformed job fails here, naming the field
    _shed_if_stale(self, job)  # before anything costs: a periodic re-assessment that waited too long
    key = key_pool().get(job.keyId)
    grant = limiter().acquire(key)  # a slot now, or reserved at most TC_LIMIT_MAX_WAIT ahead
    if grant.state in ("cooling", "disabled"):
        raise _move(self, job, key, f"key {key.id} is {grant.state}")
    if not grant.granted:  # the key is saturated: another key may have a free slot now
        raise _move_or_wait(self, job, key, grant.wait)
    slot_at = time.monotonic() + grant.wait
    # Only a task with a slot pays for loading its crop and encoding the request, and it does so before the
    # slot, so nothing but the send itself stands between the slot and the provider.
    jpeg = store.load_image(redis_client(), job.imageKey)
    if jpeg is None:
        limiter().release(key, grant.lease)
        raise _give_up(task_id, job, f"crop {job.imageKey} expired before the assessment; "
                                     f"raise TC_IMAGE_TTL or add workers")
    call = llm_client.prepare(key, settings.llm_base_url, settings.llm_model, schema.build_messages(
        job.groupIndex, job.memberTrackIds, job.features.to_wire(), jpeg, context=job.context))
    first_call_at: float | None = job.startedAt
    # this call's own slot: one sleeper per slot, no herd. The delay is read once: checking the clock and then
    # reading it again for the sleep could give a negative delay, a ValueError that failed the task without a
    # dead letter (found by bench/load.py at 300 groups/s: one task in 9,000 lost)
    delay = slot_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    blocked = limiter().blocked(key) if grant.wait > 0 else None  # cooling started while this call waited?
    if blocked:
        limiter().release(key, grant.lease)
        raise _move(self, job, key, f"key {key.id} is {blocked}")
    outcome = ""  # what the key's stats count for this call besides `calls` (limiter().finish)
    try:
        started = time.time()
        completion = llm_client.send(call, settings.llm_timeout,
                                     on_sent=lambda sent_at: limiter().confirm(key, grant.lease, sent_at))
        result = schema.parse_reply(completion.text, job.groupIndex)
        outcome = "successes"
    except llm_client.RateLimited as exc:
        outcome = "rate_limited"
        cooldown = exc.retry_after if exc.retry_after is not None else \
            limiter().next_backoff(key, settings.cooldown_first, settings.cooldown_max)
        limiter().cool_down(key, cooldown)
        limiter().count(key, "cooldowns")
        logger.warning("key %s answered 429; cooling it for %.1fs", key.id, cooldown)
        raise _move(self, job, key, "rate-limited by the provider") from None
    except llm_client.AuthRejected as exc:
        outcome = "failures"
        limiter().disable(key, str(exc))
        store.publish(redis_client(), job.cameraId, EventType.ERROR, ErrorEvent(
            code=ErrorCode.KEY_DISABLED, message=str(exc), cameraId=job.cameraId, keyId=key.id))
        raise _move(self, job, key, f"key {key.id} rejected by the provider") from None
    except (llm_client.LLMCallError, schema.ReplyError, SoftTimeLimitExceeded) as exc:
        if isinstance(exc, SoftTimeLimitExceeded):
            exc = llm_client.LLMCallError(f"the call outlived the task's time limit "
                                          f"({self.soft_time_limit or self.app.conf.task_soft_time_limit}s)")
        outcome = "failures"
        failures = job.failures + 1
        if not getattr(exc, "retryable", True) or failures > settings.llm_max_retries:
            raise _give_up(task_id, job, f"{exc} (after {failures} failed attempts)") from None
        raise _retry_later(self, job, failures, first_call_at or started, f"on key {key.id}: {exc}") from None
    finally:
        # after the send, so nothing but the HTTP call stands between grant and provider: the lease released,
        # the call counted with its outcome, a success resetting the 429 backoff, in one round trip
        limiter().finish(key, grant.lease, outcome)
    metrics = instruments.get()
    metrics.llm_seconds.labels(key.id, completion.model).observe(completion.latency)
    metrics.llm_tokens.labels(key.id, completion.model, "prompt").inc(completion.prompt_tokens)
    metrics.llm_tokens.labels(key.id, completion.model, "completion").inc(completion.completion_tokens)
    assessment = Assessment(
        cameraId=job.cameraId, groupId=job.groupId, groupIndex=job.groupIndex, taskId=task_id,
        riskLevel=result.riskLevel, riskTypes=result.riskTypes, description=result.description,
        confidence=result.confidence, dangerObjectIds=result.triggerObjectIds,
        llmLatency=round(completion.latency, 4), llmModel=completion.model, apiKeyId=key.id,
        frameTimestamp=job.frameTimestamp, queueWait=round((first_call_at or started) - (job.enqueuedAt or started), 4),
        moves=job.moves + job.reroutes, imageKey=job.imageKey, incidentId=job.incidentId, reason=job.reason,
        memberTrackIds=job.memberTrackIds,
    )
    try:
        stored = record(assessment)
    except redis.RedisError as exc:
        failures = job.failures + 1
        if failures > settings.llm_max_retries:
            raise AssessmentFailed(f"cannot store the assessment: Redis did not answer ({exc}) after {failures} "
                                   f"attempts; check TC_REDIS_URL") from exc
        raise _retry_later(self, job, failures, first_call_at or started,
                           f"cannot store the assessment ({exc})") from exc
    if not stored:
        return "already stored"
    return f"{assessment.riskLevel}: {assessment.description[:80]}"
