"""The LLM budget when the key pool cannot serve everything: the most severe work goes first, and periodic
re-assessments are the first thing given up.

**Priority** (:func:`priority_of`, 0 most urgent, 9 least; `Job.priority`):

====  ===========================================================================================
0     `near_miss` or `worsened` with a pair of severity high (a collision course, TTC/PET under the high
      thresholds): someone may be hurt within a second, the verdict is worth most now
1-2   the same with severity medium: 1 when the TTC (or, without one, the PET) is in the worse half of the
      medium band (:data:`MEDIUM_SPLIT_TTC`, :data:`MEDIUM_SPLIT_PET`), else 2 (lower TTC first)
3     `near_miss` / `worsened` with a low or no severity on the pair, and `worsened` of a group with an open
      incident (an incident getting worse)
4     `worsened` without a conflict; `appeared` / `members_changed` of a group with an open incident
5     `appeared`, `members_changed`, and any reason this module does not know
9     `reassess`: nothing changed, the group is asked again because time passed
====  ===========================================================================================

Why: a verdict is worth most while the situation lasts; a near miss is over in a second or two, a periodic
re-assessment confirms what the last verdict said. The dispatcher sends the priority with the task (Celery's
`priority`), and the broker hands a free worker the most urgent task of all its queues: on Redis, kombu keeps one
list per priority step per queue (`queue`, `queue\\x06\\x161`, ... `queue\\x06\\x169`, :func:`priority_queues`)
and its BRPOP names every queue's step 0 first, then every queue's step 1, and so on. On Redis 0 is kombu's
highest priority, so the number goes as is; on AMQP 9 is the highest (:func:`celery_priority` turns it round);
Kafka has no priorities (the topic is FIFO): there only the shedding below applies.

**Shedding** (only `reassess` jobs are ever shed; a changed situation is always asked about):

- `saturated` (:func:`should_shed`, at dispatch): the chosen key's expected wait is above `TC_BUDGET_SHED_WAIT`
  seconds. Every task queued on the key is ahead of a priority-9 job, so the wait is (queued + 1) x the key's
  emission interval; the dispatcher raises :class:`Shed` instead of enqueuing;
- `stale` (:func:`is_stale`, in the worker, before the call): the job already waited in its queue longer than
  `TC_BUDGET_SHED_WAIT` (a burst of severe work went first). Its verdict would describe a scene that is gone;
  the task returns without a call and without a result.

A shed job is counted (:func:`count_shed`): the field `shed:<reason>` of the hash `tc:stats:assess` (for
`/api/assessments/stats`, every process's sheds in one place) and the counter `tc_assessments_shed_total{reason}`
of the process that shed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

from traffic_celery import names
from traffic_celery.protocol import Job
from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments

logger = logging.getLogger(__name__)

HIGHEST, LOWEST = 0, 9
DEFAULT = 5
#: the priority steps of the Redis broker (`broker_transport_options`): one list per priority
PRIORITY_STEPS = list(range(HIGHEST, LOWEST + 1))
#: kombu's separator between a queue's name and its priority step (its default, set explicitly in the broker
#: options so that readers of queue depths, :func:`priority_queues`, use the same one)
PRIORITY_SEP = "\x06\x16"
#: the medium severity bands are TTC 1.0-1.5 s and PET 0.5-1.0 s by default (`TC_CONFLICT_*`): their midpoints
#: split them into priority 1 (the worse half) and 2
MEDIUM_SPLIT_TTC = 1.25
MEDIUM_SPLIT_PET = 0.75

NEAR_MISS, APPEARED, MEMBERS_CHANGED, WORSENED, REASSESS = (
    "near_miss", "appeared", "members_changed", "worsened", "reassess")
SATURATED, STALE = "saturated", "stale"
SHED_REASONS = (SATURATED, STALE)


class Shed(Exception):
    """The dispatcher did not enqueue the job: the budget shed it (`reason`: :data:`SHED_REASONS`). Already
    counted. The caller treats the group as not assessed and does not ask again before its next due time."""

    def __init__(self, reason: str, key_id: str = "", expected_wait: float | None = None):
        self.reason, self.key_id, self.expected_wait = reason, key_id, expected_wait
        wait = "" if expected_wait is None else f" (expected wait {expected_wait:.1f}s on key {key_id})"
        super().__init__(f"assessment shed: {reason}{wait}")


def _fields(job: Job | Mapping[str, Any]) -> tuple[str, Any, str | None]:
    if isinstance(job, Job):
        return job.reason, job.features.conflict, job.incidentId
    features = job.get("features") or {}
    return str(job.get("reason", "")), features.get("conflict"), job.get("incidentId")


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def priority_of(job: Job | Mapping[str, Any]) -> int:
    """The job's priority, 0 most urgent (see the module docstring); a job or its wire fields."""
    reason, conflict, incident = _fields(job)
    if reason == REASSESS:
        return LOWEST
    severity = _get(conflict, "severity") if conflict is not None else None
    if reason in (NEAR_MISS, WORSENED):
        if severity == "high":
            return 0
        if severity == "medium":
            ttc, pet = _get(conflict, "ttc"), _get(conflict, "pet")
            worse_half = ttc <= MEDIUM_SPLIT_TTC if ttc is not None else pet is not None and pet <= MEDIUM_SPLIT_PET
            return 1 if worse_half else 2
        if reason == NEAR_MISS or conflict is not None or incident:
            return 3
        return 4
    if reason in (APPEARED, MEMBERS_CHANGED):
        return 4 if incident else DEFAULT
    return DEFAULT


def celery_priority(priority: int, transport: str) -> int | None:
    """Celery's `priority=` for a job priority (0 most urgent) on a broker transport (a URL scheme or kombu
    transport name): as is on Redis (kombu: 0 highest), turned round on AMQP (9 highest; the queues need
    `x-max-priority`), None where the transport has none (Kafka: FIFO per topic)."""
    name = transport.lower()
    if name in ("redis", "rediss", "unix", "sentinel", "tcredis") or name.endswith("redis"):
        return priority
    if name in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return LOWEST - priority
    return None


def priority_queues(queue: str) -> list[str]:
    """The Redis lists of a Celery queue, one per priority step (kombu's names): sum their LLENs for its depth."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def expected_wait(queued: int, interval: float) -> float:
    """Seconds before a lowest-priority job enqueued now is called: everything queued goes first, one call per
    emission interval of the key (a lower bound: calls in flight and retries waiting for their ETA add to it)."""
    return (queued + 1) * interval


def _limit(limit: float | None) -> float:
    return get_settings().budget_shed_wait if limit is None else limit


def should_shed(job: Job | Mapping[str, Any], expected_wait: float | None, limit: float | None = None) -> str | None:
    """"saturated" when a `reassess` job would wait longer than `limit` (`TC_BUDGET_SHED_WAIT`) for its key;
    None otherwise, and always None for other reasons or when the wait is unknown (None)."""
    reason = _fields(job)[0]
    if reason != REASSESS or expected_wait is None:
        return None
    return SATURATED if expected_wait > _limit(limit) else None


def is_stale(job: Job, now: float | None = None, limit: float | None = None) -> str | None:
    """"stale" when a `reassess` job has waited in its queue (since `enqueuedAt`) longer than `limit`."""
    if job.reason != REASSESS or not job.enqueuedAt:
        return None
    waited = (time.time() if now is None else now) - job.enqueuedAt
    return STALE if waited > _limit(limit) else None


def count_shed(r: redis.Redis | None, reason: str, n: int = 1) -> None:
    """Count `n` shed jobs: `shed:<reason>` in `tc:stats:assess` (when `r` is given) and
    `tc_assessments_shed_total{reason}`. A Redis failure is logged, never raised: counting must not turn a shed
    into an error."""
    instruments.get().assessments_shed.labels(reason).inc(n)
    if r is None:
        return
    try:
        r.hincrby(names.ASSESS_STATS, f"shed:{reason}", n)
    except redis.RedisError as exc:
        logger.warning("cannot count a shed assessment (%s) in Redis: %s", reason, exc)
