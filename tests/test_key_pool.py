"""Per-key queues under real load: several Celery worker processes, the fake provider enforcing the limits and
counting what it receives, Redis pub/sub for what the clients see."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import redis
import requests

from traffic_celery import names, store
from traffic_celery.broker.config import producer_app
from traffic_celery.embedded_redis import free_port
from traffic_celery.llm import budget
from traffic_celery.llm.dispatch import Dispatcher
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.limiter import KeyLimiter
from traffic_celery.llm.router import build_router
from traffic_celery.settings import Settings

from .conftest import ASSETS_BUS, Proc, wait_for

_db = itertools.count(2)
SECRETS = {"a": "sk-pool-test-secret-aaaa-1111", "b": "sk-pool-test-secret-bbbb-2222"}


class PoolSystem:
    """A Redis database, a keys file, the fake provider and N worker processes, for one test."""

    def __init__(self, redis_url: str, tmp: Path, keys: dict[str, dict[str, Any]], provider_args: list[str],
                 workers: int, concurrency: int, env: dict[str, str], log_dir: Path):
        self.r = redis.Redis.from_url(redis_url)
        self.r.flushdb()
        keys_file = tmp / "keys.yaml"
        keys_file.write_text(json.dumps({"keys": [{"id": k, "secret": SECRETS[k], **v} for k, v in keys.items()]}))
        port = free_port()
        self.provider_url = f"http://127.0.0.1:{port}"
        self.env = {**env, "TC_REDIS_URL": redis_url, "TC_LLM_KEYS_FILE": str(keys_file),
                    "TC_LLM_BASE_URL": self.provider_url + "/v1"}
        self.env.pop("TC_LLM_API_KEYS", None)
        self.settings = Settings(redis_url=redis_url, llm_keys_file=keys_file,
                                 **{k[3:].lower(): v for k, v in self.env.items()
                                    if k.startswith("TC_") and k[3:].lower() in Settings.model_fields
                                    and k not in ("TC_REDIS_URL", "TC_LLM_KEYS_FILE")})
        self.procs: list[Proc] = [Proc("provider", [sys.executable, "-m", "traffic_celery.fake_provider", "--port",
                                                    str(port), *provider_args], self.env, log_dir)]
        wait_for(lambda: requests.get(self.provider_url + "/health", timeout=1).ok, 30, "the provider")
        for i in range(workers):
            self.procs.append(Proc(f"worker{i}", [sys.executable, "-m", "workers", "--hostname", f"w{i}@%h",
                                                  "-Q", ",".join(f"llm.{k}" for k in keys),
                                                  "--concurrency", str(concurrency)], self.env, log_dir))
        # no `results` worker: the LLM workers store and publish the assessments themselves
        for proc in self.procs[1:]:
            wait_for(lambda p=proc: p.alive() and "ready." in p.output(), 60, f"{proc.name} to be ready")
        self.pool = KeyPool.from_settings(self.settings)
        self.limiter = KeyLimiter(self.r)
        self.router = build_router(self.settings, self.r, self.pool)
        self.dispatch = Dispatcher(producer_app(self.settings), self.router)
        self.events = self.r.pubsub(ignore_subscribe_messages=True)
        self.events.psubscribe(names.EVENTS_PATTERN)
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(ASSETS_BUS))[200:700, 0:400])
        self.jpeg = buf.tobytes()

    def enqueue(self, n: int, camera: str = "pool") -> list[str]:
        ids = []
        for i in range(n):
            image_key = store.store_image(self.r, self.jpeg, 600)
            ids.append(self.dispatch({
                "cameraId": camera, "groupId": f"g{i}", "groupIndex": 0, "reason": "appeared", "imageKey": image_key,
                "features": {"objectCount": 2, "classCounts": {"bus": 1, "person": 1}, "minGap": 0.1,
                             "pedestrianVehicleGap": 0.1},
                "memberTrackIds": [1, 2], "frameTimestamp": time.time()}))
        return ids

    def collect(self, until, timeout: float, what: str) -> list[dict[str, Any]]:
        """Events seen on every camera channel until `until(events)` is true."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.events.get_message(timeout=0.5)
            if msg and msg["type"] == "pmessage":
                seen.append(json.loads(msg["data"]))
                if until(seen):
                    return seen
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; saw "
                             f"{[e['type'] for e in seen][-10:]} ({len(seen)} events)")

    def provider_stats(self) -> dict[str, Any]:
        return requests.get(self.provider_url + "/stats", timeout=5).json()

    def provider_log(self) -> list[dict[str, Any]]:
        return requests.get(self.provider_url + "/log", timeout=5).json()["requests"]

    def stop(self) -> None:
        self.events.close()
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.procs)


def assessments(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "risk_assessment"]


@pytest.fixture()
def pool_system(redis_server, base_env, tmp_path, log_dir) -> Iterator:
    systems: list[PoolSystem] = []

    def make(keys, provider_args, workers=2, concurrency=3, **env) -> PoolSystem:
        url = redis_server.url.replace("/0", f"/{next(_db) % 14 + 2}")
        system = PoolSystem(url, tmp_path, keys, provider_args, workers, concurrency,
                            {**base_env, **{f"TC_{k.upper()}": str(v) for k, v in env.items()}}, log_dir)
        systems.append(system)
        return system

    try:
        yield make
    finally:
        for system in systems:
            system.stop()
            logs = system.logs()
            for secret in SECRETS.values():  # no full key in any log line of the run
                assert secret not in logs, f"a full API key appeared in the logs of {log_dir}"


def test_worker_processes_sharing_one_key_never_exceed_its_qps(pool_system):
    system = pool_system({"a": {"qps": 4, "rpm": 10_000, "max_in_flight": 8}},
                         ["--key-limit", "a=4", "--latency", "0.2", "--latency-jitter", "0.2"],
                         workers=3, concurrency=3)
    ids = system.enqueue(36)
    events = system.collect(lambda ev: len(assessments(ev)) >= 36, 60, "36 assessments")
    stats = system.provider_stats()["keys"]["a"]
    assert stats["rateLimited"] == 0, stats
    assert stats["maxInSecond"] <= 4
    assert sorted(a["taskId"] for a in assessments(events)) == sorted(ids)   # each task once
    log = [e["t"] for e in system.provider_log() if e["status"] == 200]
    assert len(log) == 36
    assert log[-1] - log[0] >= 35 / 4 * 0.95  # the key's rate, not the 9 worker slots', set the pace


def test_rpm_is_enforced_across_processes(pool_system):
    system = pool_system({"a": {"qps": 50, "rpm": 30, "max_in_flight": 8}},
                         ["--key-limit", "a=50/30", "--latency", "0.05"], workers=2, concurrency=2)
    system.enqueue(5)
    system.collect(lambda ev: len(assessments(ev)) >= 5, 60, "5 assessments")
    times = [e["t"] for e in system.provider_log() if e["status"] == 200]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert system.provider_stats()["keys"]["a"]["rateLimited"] == 0
    assert min(gaps) >= 60 / 30 * 0.98, gaps   # 30 per minute means one every 2 s, never a burst of 30


def test_429_cools_the_key_and_moves_tasks_to_another(pool_system):
    # The provider allows key a far less than the keys file claims, and gives no Retry-After.
    system = pool_system({"a": {"qps": 5, "rpm": 10_000}, "b": {"qps": 5, "rpm": 10_000}},
                         ["--key-limit", "a=1", "--no-retry-after", "--latency", "0.05"],
                         workers=2, concurrency=2, cooldown_first=3, router="round_robin")
    ids = system.enqueue(30)
    events = system.collect(lambda ev: len(assessments(ev)) >= 30, 90, "30 assessments")
    got = assessments(events)
    assert sorted(a["taskId"] for a in got) == sorted(ids)
    log = system.provider_log()
    first_429 = next(e["t"] for e in log if e["key"] == "a" and e["status"] == 429)
    during = [e for e in log if e["key"] == "a" and first_429 + 0.2 < e["t"] < first_429 + 3.0]
    assert during == [], "a cooling key received calls before its cooldown ended"
    assert system.provider_stats()["keys"]["b"]["rateLimited"] == 0
    assert any(a["apiKeyId"] == "b" for a in got)


def test_401_disables_the_key_and_says_so(pool_system):
    system = pool_system({"a": {"qps": 20, "rpm": 10_000}, "b": {"qps": 20, "rpm": 10_000}},
                         ["--revoked", "a", "--latency", "0.05"], workers=1, concurrency=2, router="round_robin")
    ids = system.enqueue(10)
    events = system.collect(lambda ev: len(assessments(ev)) >= 10, 60, "10 assessments")
    assert sorted(a["taskId"] for a in assessments(events)) == sorted(ids)
    assert {a["apiKeyId"] for a in assessments(events)} == {"b"}
    errors = [e["data"] for e in events if e["type"] == "error"]
    assert errors and errors[0]["code"] == "key_disabled" and errors[0]["keyId"] == "a"
    assert SECRETS["a"] not in errors[0]["message"] and "sk-…aaaa"[:3] in errors[0]["message"]
    key_a = system.pool.get("a")
    assert system.limiter.state(key_a)["state"] == "disabled"
    assert system.provider_stats()["keys"]["a"]["requests"] <= 2   # at most the calls already in flight
    more = system.enqueue(4)
    events = system.collect(lambda ev: len(assessments(ev)) >= 4, 30, "4 more assessments")
    assert {a["apiKeyId"] for a in assessments(events)} == {"b"} and len(more) == 4
    assert system.provider_stats()["keys"]["a"]["requests"] <= 2   # nothing more reaches a disabled key


def test_worker_killed_mid_call_redelivers_once_and_the_lease_expires(pool_system):
    system = pool_system({"a": {"qps": 10, "rpm": 10_000, "max_in_flight": 1}}, ["--latency", "2"],
                         workers=1, concurrency=2, llm_timeout=5, lease_ttl=3)
    (task_id,) = system.enqueue(1)
    leases = "tc:key:a:leases"
    member = wait_for(lambda: system.r.zrange(leases, 0, -1), 20, "the call to hold its lease")[0].decode()
    wait_for(lambda: system.provider_stats()["keys"]["a"]["requests"] == 1, 10, "the call to reach the provider")
    pid = int(member.split(":")[1])
    assert pid not in {p.process.pid for p in system.procs}  # a pool child, not a worker's main process
    os.kill(pid, signal.SIGKILL)
    events = system.collect(lambda ev: len(assessments(ev)) >= 1, 60, "the redelivered task's assessment")
    (got,) = assessments(events)
    assert got["taskId"] == task_id
    times = [e["t"] for e in system.provider_log() if e["key"] == "a"]
    assert len(times) == 2                      # the killed call, then the redelivered one
    assert times[1] - times[0] >= 3 - 0.2       # the dead call's lease held the key's only slot until it expired
    assert system.r.xlen(names.alerts_key("pool")) == 1
    assert system.r.zcard(leases) == 0


def test_task_arguments_carry_the_key_id_never_the_secret(pool_system):
    system = pool_system({"a": {"qps": 5}, "b": {"qps": 5}}, ["--latency", "0.05"], workers=0)
    system.enqueue(2)
    raw = b"".join(m for q in (*budget.priority_queues("llm.a"), *budget.priority_queues("llm.b"))
                   for m in system.r.lrange(q, 0, -1))  # one Redis list per priority step
    assert raw.count(b"assess_group") == 2
    assert b'"keyId"' in raw or b'keyId' in raw
    for secret in SECRETS.values():
        assert secret.encode() not in raw


def test_api_keys_shows_masked_keys_and_state(web):
    body = requests.get(web + "/api/keys", timeout=5).json()
    assert {k["id"] for k in body} == {"test-a", "test-b"}
    for k in body:
        assert k["key"].startswith("tk-…") and len(k["key"]) == 8
        assert {"state", "inFlight", "calls", "successes", "rateLimited", "cooldownLeft", "queued"} <= set(k)
    assert "tk-test-secret" not in json.dumps(body)
    metrics = requests.get(web + "/metrics", timeout=5).text
    assert 'tc_llm_key_calls_total{key="test-a"}' in metrics
    assert "tk-test-secret" not in metrics


@pytest.mark.parametrize("fault, reason", [
    ("--error-rate", "LLM provider failed (500)"),
    ("--malformed-rate", "LLM reply holds no JSON object"),
    ("--wrong-schema-rate", "LLM reply does not follow the schema"),
    ("--hang-rate", "timed out after 1s"),  # accepted, never answered: the call's own timeout ends it
])
def test_provider_failures_retry_then_dead_letter_with_reason(pool_system, fault, reason):
    system = pool_system({"a": {"qps": 20, "rpm": 10_000}}, [fault, "1.0", "--latency", "0.02"],
                         workers=1, concurrency=2, llm_max_retries=2, llm_timeout=1)
    started = time.monotonic()
    (task_id,) = system.enqueue(1)
    events = system.collect(lambda ev: any(e["type"] == "error" for e in ev), 60, "the error event")
    # three attempts of at most 1 s each, and two backoffs of at most 2 s and 4 s: nothing waits longer
    assert time.monotonic() - started < 3 * 1 + 2 + 4 + 5
    error = next(e["data"] for e in events if e["type"] == "error")
    assert error["code"] == "assessment_failed" and error["taskId"] == task_id
    assert reason in error["message"] and "after 3 failed attempts" in error["message"]
    assert system.provider_stats()["keys"]["a"]["requests"] == 3     # the first call and two retries
    (entry,) = system.r.xrange(names.DLQ)
    dead = json.loads(entry[1][b"entry"])
    assert dead["taskId"] == task_id and reason in dead["reason"]
    assert assessments(events) == []
