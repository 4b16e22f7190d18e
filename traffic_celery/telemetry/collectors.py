"""Prometheus metrics of the project, one prefix (`tc_`), bounded labels (key id, queue), never a secret.

Per-key figures live in Redis (the limiter's shared state), so every process sees the same numbers: the
:class:`KeyPoolCollector` reads them at scrape time, whichever process is scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, TypedDict, cast

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from traffic_celery import names
from traffic_celery.llm.budget import SHED_REASONS
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.limiter import KeyLimiter
from traffic_celery.llm.router import Router
from traffic_celery.vision.scheduling import REASONS

logger = logging.getLogger(__name__)


def key_stats(pool: KeyPool, limiter: KeyLimiter, router: Router) -> list[dict[str, Any]]:
    """What `/api/keys` shows: masked key, limits, state, in flight, counters, cooldown left, queue depth."""
    depths = {load.key.id: load.queued for load in router.loads(pool)}
    return [{"id": key.id, "key": key.masked, "enabled": key.enabled, "qps": key.qps, "rpm": key.rpm,
             "maxInFlight": key.max_in_flight, "weight": key.weight, "queue": key.queue,
             "queued": depths[key.id], **limiter.state(key)} for key in pool]


class KeyPoolCollector(Collector):
    def __init__(self, pool: KeyPool, limiter: KeyLimiter, router: Router):
        self._pool, self._limiter, self._router = pool, limiter, router

    def collect(self) -> Iterator[Metric]:
        try:
            stats = key_stats(self._pool, self._limiter, self._router)
        except redis.RedisError as exc:
            logger.warning("cannot read key stats for /metrics: %s", exc)
            return
        counters = {name: CounterMetricFamily(f"tc_llm_key_{name}", help_, labels=["key"]) for name, help_ in (
            ("calls", "LLM calls made with the key"), ("successes", "LLM calls that returned an assessment"),
            ("rate_limited", "429 answers the key received"), ("failures", "failed LLM calls (5xx, timeouts, "
                                                                           "bad replies, 401/403)"),
            ("cooldowns", "cooldowns the key entered after a 429"))}
        gauges = {name: GaugeMetricFamily(f"tc_llm_key_{name}", help_, labels=["key"]) for name, help_ in (
            ("in_flight", "calls in flight (live leases)"), ("cooldown_seconds", "cooldown left"),
            ("queue_depth", "tasks waiting on the key's queue"), ("disabled", "1 when the key is disabled"),
            ("limit_qps", "the key's QPS limit"))}
        for s in stats:
            labels = [str(s["id"])]
            for name, field in (("calls", "calls"), ("successes", "successes"), ("rate_limited", "rateLimited"),
                                ("failures", "failures"), ("cooldowns", "cooldowns")):
                counters[name].add_metric(labels, float(s[field]))
            gauges["in_flight"].add_metric(labels, float(s["inFlight"]))
            gauges["cooldown_seconds"].add_metric(labels, float(s["cooldownLeft"]))
            gauges["queue_depth"].add_metric(labels, float(s["queued"]))
            gauges["disabled"].add_metric(labels, 1.0 if s["state"] == "disabled" else 0.0)
            gauges["limit_qps"].add_metric(labels, float(s["qps"]))
        yield from counters.values()
        yield from gauges.values()


class AssessmentStats(TypedDict):
    """What `/api/assessments/stats` shows (a plain dict at run time)."""

    calls: dict[str, int]
    callsTotal: int
    saved: int
    shed: dict[str, int]  # jobs the LLM budget gave up, by why (`traffic_celery.llm.budget.SHED_REASONS`)
    shedTotal: int


def assessment_stats(r: redis.Redis) -> AssessmentStats:
    """LLM calls the scheduler made (per reason) and saved, and the jobs the budget shed (per reason: not
    enqueued, `saturated`, or dropped by a worker, `stale`), over all cameras, capture nodes and workers."""
    raw = {k.decode(): int(v) for k, v in cast("dict[bytes, bytes]", r.hgetall(names.ASSESS_STATS)).items()}
    calls = {reason: raw.get(f"calls:{reason}", 0) for reason in REASONS}
    shed = {reason: raw.get(f"shed:{reason}", 0) for reason in SHED_REASONS}
    shed.update({field[5:]: n for field, n in raw.items() if field.startswith("shed:")})  # a newer reason too
    return {"calls": calls, "callsTotal": sum(calls.values()), "saved": raw.get("saved", 0),
            "shed": shed, "shedTotal": sum(shed.values())}


class AssessmentCollector(Collector):
    """`tc_assessment_calls_total{reason}` and `tc_assessment_calls_saved_total`, read from Redis at scrape."""

    def __init__(self, r: redis.Redis):
        self._redis = r

    def collect(self) -> Iterator[Metric]:
        try:
            stats = assessment_stats(self._redis)
        except redis.RedisError as exc:
            logger.warning("cannot read assessment stats for /metrics: %s", exc)
            return
        calls = CounterMetricFamily("tc_assessment_calls", "groups sent to the LLM, by why they were due",
                                    labels=["reason"])
        for reason, count in stats["calls"].items():
            calls.add_metric([reason], float(count))
        yield calls
        yield CounterMetricFamily("tc_assessment_calls_saved", "groups of analysed frames not sent to the LLM "
                                  "(one call per group per frame otherwise)", value=float(stats["saved"]))
