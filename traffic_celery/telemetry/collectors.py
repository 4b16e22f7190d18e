"""Prometheus metrics of the project, one prefix (`tc_`), bounded labels (key id, queue), never a secret.

Per-key figures live in Redis (the limiter's shared state), so every process sees the same numbers: the
:class:`KeyPoolCollector` reads them at scrape time, whichever process is scraped. So do the figures the
operator's alerts (`deployment/alerts.yml`) need and no process counts: whether each camera is up
(:class:`CameraCollector`, from the camera registry) and how many live workers consume each key's queue
(:class:`KeyConsumersCollector`, from the workers' presence keys).
"""

from __future__ import annotations

import json
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
from traffic_celery.protocol import CameraState
from traffic_celery.registry import CameraRegistry
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


def camera_up(entry: dict[str, Any]) -> bool:
    """A camera (an entry of :meth:`CameraRegistry.describe`) is up when it is enabled, its last state is
    `online` and a capture node holds its lease: a node killed without handing over leaves `online` behind, but
    its lease expires within `TC_CAPTURE_LEASE_TTL`."""
    return bool(entry["enabled"]) and entry["state"] == CameraState.ONLINE and entry["node"] is not None


class CameraCollector(Collector):
    """`tc_camera_up{camera}` (1 up, 0 otherwise: see :func:`camera_up`) and `tc_camera_enabled{camera}` (1 unless
    stopped), per registered camera, read from the registry at scrape. The camera ids are the operator's (a
    removed camera's series ends), so the label stays bounded."""

    def __init__(self, registry: CameraRegistry):
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        try:
            cameras = self._registry.describe()
        except redis.RedisError as exc:
            logger.warning("cannot read the camera registry for /metrics: %s", exc)
            return
        up = GaugeMetricFamily("tc_camera_up", "1 when the camera is enabled, online and held by a capture node",
                               labels=["camera"])
        enabled = GaugeMetricFamily("tc_camera_enabled", "1 when the camera should run (0: stopped by an "
                                    "operator, or its source is over)", labels=["camera"])
        for entry in cameras:
            up.add_metric([entry["cameraId"]], 1.0 if camera_up(entry) else 0.0)
            enabled.add_metric([entry["cameraId"]], 1.0 if entry["enabled"] else 0.0)
        yield up
        yield enabled


def queue_consumers(r: redis.Redis) -> dict[str, int]:
    """How many live Celery workers consume each queue, from their presence keys (`names.worker_key`, written by
    `workers.events.Presence` every 2 s, gone 6 s after the worker stops)."""
    keys = list(r.scan_iter(match=names.worker_key("*"), count=500))
    counts: dict[str, int] = {}
    for raw in cast("list[bytes | None]", r.mget(keys)) if keys else []:
        if raw is None:  # expired between the scan and the read
            continue
        try:
            queues = json.loads(raw)["queues"]
        except (ValueError, KeyError, TypeError):
            queues = None
        if not isinstance(queues, list):
            logger.debug("ignoring a malformed worker presence document: %r", raw[:200])
            continue
        for queue in {str(q) for q in queues}:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


class KeyConsumersCollector(Collector):
    """`tc_llm_key_consumers{key}`: live workers consuming the queue of each enabled key (a key with
    `enabled: false` in the keys file gets no task, so it needs no worker and is left out)."""

    def __init__(self, pool: KeyPool, r: redis.Redis):
        self._pool, self._redis = pool, r

    def collect(self) -> Iterator[Metric]:
        try:
            counts = queue_consumers(self._redis)
        except redis.RedisError as exc:
            logger.warning("cannot read the workers' presence for /metrics: %s", exc)
            return
        consumers = GaugeMetricFamily("tc_llm_key_consumers", "live Celery workers consuming the key's queue",
                                      labels=["key"])
        for key in self._pool.enabled:
            consumers.add_metric([key.id], float(counts.get(key.queue, 0)))
        yield consumers
