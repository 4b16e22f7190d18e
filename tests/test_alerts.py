"""The operator's alarms (deployment/alerts.yml): promtool accepts the rules and their unit tests pass
(deployment/alerts_test.yml), Prometheus's configuration loads them, and every series a rule reads is one the
running system exports, with the labels the rule groups by. Then the two gauges added for the alerts, against a
real Redis: `tc_camera_up` / `tc_camera_enabled` from the camera registry, `tc_llm_key_consumers` from the
workers' presence keys (a real Celery worker's, and hand-written ones for the edge cases).

promtool comes from Debian's `prometheus` package (`make promtool`); without it these tests fail, they do not
skip: the alerts would otherwise ship unchecked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from traffic_celery import names, store
from traffic_celery.llm.keys import KeyPool
from traffic_celery.protocol import CameraState
from traffic_celery.registry import CameraConfig, CameraRegistry
from traffic_celery.settings import REPO_ROOT, Settings
from traffic_celery.telemetry.collectors import CameraCollector, KeyConsumersCollector

from .conftest import ASSETS_BUS, TEST_KEYS, Proc, scrape, wait_for

DEPLOYMENT = REPO_ROOT / "deployment"
ALERTS = DEPLOYMENT / "alerts.yml"
ALERT_NAMES = {"AssessmentLatencyHigh", "AssessmentErrorRateHigh", "LLMKeyFailing", "LLMKeyBacklog",
               "CameraOffline", "LLMKeyNoConsumer"}
SELECTOR = re.compile(r"\b(tc_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*,?')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed, so deployment/alerts.yml cannot be checked: run `make promtool` "
                    "(scripts/install_debian_tool.sh installs Debian's prometheus package, the server not started)")
    return path


def run_promtool(*args: str, cwd: Path = DEPLOYMENT) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(ALERTS.read_text())["groups"]
    assert group["name"] == "traffic_celery"
    return list(group["rules"])


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Every `tc_*` series an expression reads, with its equality matchers (the only kind the rules use)."""
    found = []
    for name, body in SELECTOR.findall(expr):
        matchers = MATCHER.findall(body or "")
        assert "".join(m.group(0) for m in MATCHER.finditer(body or "")).strip() == (body or "").strip(), \
            f"cannot read the matchers of {name}{{{body}}}"
        assert all(op == "=" for _, op, _ in matchers), f"{name}: only `=` matchers are checked here: {body}"
        found.append((name, {label: value for label, _, value in matchers}))
    return found


def exposition(*collectors: Collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a scrape of these collectors alone shows: {(sample name, sorted labels): value}."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples}


# --- promtool -----------------------------------------------------------------------------------------------------
def test_promtool_accepts_the_rules():
    output = run_promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output, output


def test_promtool_unit_tests_of_the_rules_pass():
    output = run_promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output, output


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not():
    tests = yaml.safe_load((DEPLOYMENT / "alerts_test.yml").read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == ALERT_NAMES, f"no firing case for {sorted(ALERT_NAMES - fired)}"
    assert quiet == ALERT_NAMES, f"no quiet case for {sorted(ALERT_NAMES - quiet)}"


def test_prometheus_configuration_loads_the_rules_the_compose_file_mounts(tmp_path):
    """prometheus.yml names the file where docker-compose.yml mounts alerts.yml; with that path pointing at the
    repository's file, promtool accepts the whole configuration and finds the six rules through it."""
    config = yaml.safe_load((DEPLOYMENT / "prometheus.yml").read_text())
    (rule_file,) = config["rule_files"]
    compose = yaml.safe_load((DEPLOYMENT / "docker-compose.yml").read_text())
    assert f"./{ALERTS.name}:{rule_file}:ro" in compose["services"]["prometheus"]["volumes"]
    config["rule_files"] = [str(ALERTS)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    output = run_promtool("check", "config", str(local), cwd=tmp_path)
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output, output


def test_every_rule_says_how_bad_for_how_long_and_what_to_do():
    found = rules()
    assert {rule["alert"] for rule in found} == ALERT_NAMES
    for rule in found:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for:` duration"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert summary and len(summary) < 120, f"{name}: the summary is one short line"
        assert "First:" in description, f"{name}: the description has no runbook line (`First: ...`)"
        for label in re.findall(r"\$labels\.(\w+)", summary + description):
            assert re.search(rf"\bby\s*\([^)]*\b{label}\b", rule["expr"]), \
                f"{name}: the annotations use $labels.{label}, which the expression does not keep"


def test_every_ratio_divides_by_a_rate_above_zero():
    for rule in rules():
        expr = " ".join(rule["expr"].split())
        for divisor in re.findall(r"/\s*(.*)", expr):
            assert divisor.startswith("(") and re.match(r"\(.*\)\s*>\s*0\s*\)", divisor), \
                f"{rule['alert']}: divides by something that may be zero: {divisor}"


# --- the rules read what the system exports -----------------------------------------------------------------------
def test_every_series_a_rule_reads_is_exported_with_the_labels_it_groups_by(web, settings, redis_client):
    """Against the session's web tier, worker and provider: one assessment that succeeds and one that fails for
    good (its crop is gone), and a registered (stopped) camera. Then every `tc_*` series of every rule, with its
    label matchers (the assessment task's name), is in the web tier's /metrics, and carries the labels the rule
    groups by (`le`, `key`, `camera`). A renamed metric, task or label fails here before it silences an alert."""
    from traffic_celery.broker.config import producer_app
    from traffic_celery.llm.dispatch import Dispatcher
    from traffic_celery.llm.router import build_router

    CameraRegistry(redis_client).add(CameraConfig(cameraId="alerts-cam", url="rtsp://192.0.2.1/stream",
                                                  enabled=False))
    dispatch = Dispatcher(producer_app(settings), build_router(settings, redis_client,
                                                              KeyPool.from_settings(settings)))
    jpeg = cv2.imencode(".jpg", cv2.imread(str(ASSETS_BUS))[200:700, 0:400])[1].tobytes()
    job = {"cameraId": "alerts-cam", "groupId": "g1", "groupIndex": 0, "reason": "appeared",
           # two pedestrians apart, no vehicle: a calm verdict
           "features": {"objectCount": 2, "classCounts": {"person": 2}, "minGap": 0.5, "pedestrianVehicleGap": None},
           "memberTrackIds": [1, 2]}
    task = "workers.assess.assess_group"
    before = scrape(web)

    def count(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
        return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))

    task_ids = [dispatch({**job, "imageKey": store.store_image(redis_client, jpeg, 600),
                          "frameTimestamp": time.time()}),
                dispatch({**job, "groupId": "g2", "imageKey": names.image_key(f"gone-{uuid.uuid4().hex}"),
                          "frameTimestamp": time.time()})]
    try:
        def settled() -> list[tuple[str, dict[str, str], float]] | None:
            now = scrape(web)
            done = (count(now, "tc_tasks_failed_total", task=task) > count(before, "tc_tasks_failed_total", task=task)
                    and count(now, "tc_assessment_latency_seconds_count")
                    > count(before, "tc_assessment_latency_seconds_count"))
            return now if done else None

        samples = wait_for(settled, 60, "the failed task and the stored assessment in the web tier's /metrics")
        for rule in rules():
            grouped = {label.strip() for labels in GROUPING.findall(rule["expr"]) for label in labels.split(",")
                       if label.strip()}
            for name, matchers in selectors(rule["expr"]):
                matching = [labels for n, labels, _ in samples
                            if n == name and all(labels.get(k) == v for k, v in matchers.items())]
                assert matching, f"{rule['alert']}: no exported series {name}{matchers}; exported tc_ names: " \
                                 f"{sorted({n for n, _, _ in samples if n.startswith('tc_')})}"
                for label in grouped:
                    assert all(label in labels for labels in matching), \
                        f"{rule['alert']}: {name} has no label {label!r}: {matching[:3]}"
        # the figures the new gauges give on the live system: the session's worker consumes every key's queue
        for key in ("test-a", "test-b"):
            assert count(samples, "tc_llm_key_consumers", key=key) >= 1, key
        assert count(samples, "tc_camera_up", camera="alerts-cam") == 0       # stopped: not up ...
        assert count(samples, "tc_camera_enabled", camera="alerts-cam") == 0  # ... and not meant to run
    finally:  # the failed task's dead letter and the camera's stored assessment are this test's own
        for entry_id, fields in redis_client.xrange(names.DLQ):
            if json.loads(fields[b"entry"])["taskId"] in task_ids:
                redis_client.xdel(names.DLQ, entry_id)
        for pattern in ("tc:camera:alerts-cam:*", names.snapshot_key("alerts-cam", "*")):
            for key in redis_client.scan_iter(match=pattern):
                redis_client.delete(key)


# --- tc_camera_up / tc_camera_enabled -----------------------------------------------------------------------------
def test_camera_up_reads_the_registry_state_and_the_capture_lease(isolated_redis):
    r = isolated_redis.client
    registry = CameraRegistry(r)
    collector = CameraCollector(registry)
    for camera_id, enabled in (("online", True), ("reconnecting", True), ("stopped", False), ("orphan", True),
                               ("starting", True)):
        assert registry.add(CameraConfig(cameraId=camera_id, url="rtsp://192.0.2.1/s", enabled=enabled))
    assert registry.claim("online", "node-a", ttl=30)
    assert registry.set_status("online", CameraState.ONLINE, "frames arrive", "node-a")
    assert registry.claim("reconnecting", "node-a", ttl=30)
    assert registry.set_status("reconnecting", CameraState.RECONNECTING, "lost; next attempt in 2s", "node-a")
    assert registry.claim("orphan", "node-b", ttl=30)
    assert registry.set_status("orphan", CameraState.ONLINE, "frames arrive", "node-b")

    def figures() -> dict[str, tuple[float, float]]:
        seen = exposition(collector)
        return {camera: (seen[("tc_camera_up", (("camera", camera),))],
                         seen[("tc_camera_enabled", (("camera", camera),))])
                for camera in ("online", "reconnecting", "stopped", "orphan", "starting")}

    assert figures() == {"online": (1.0, 1.0), "reconnecting": (0.0, 1.0), "stopped": (0.0, 0.0),
                         "orphan": (1.0, 1.0), "starting": (0.0, 1.0)}
    # node-b is killed: its last word stays `online`, but it renews the lease no more, which runs out (shortened
    # here from the 30 s above, as a dead node's last renewal would leave it)
    r.pexpire(names.owner_key("orphan"), 300)
    wait_for(lambda: figures()["orphan"] == (0.0, 1.0), 10, lambda: f"the orphan camera down: {figures()}")
    assert registry.status("orphan")["state"] == CameraState.ONLINE  # what the API still says: not enough

    # an operator stops the online camera; then removes it: its series ends
    registry.set_enabled("online", False)
    assert figures()["online"] == (0.0, 0.0)
    assert registry.remove("online")
    assert not any(labels == (("camera", "online"),) for _name, labels in exposition(collector))


def test_camera_metrics_say_nothing_rather_than_wrong_when_redis_is_gone(redis_server):
    # nothing listens on port 1; no retries, so the test does not wait for redis-py's backoff
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    assert exposition(CameraCollector(CameraRegistry(dead)), KeyConsumersCollector(
        KeyPool.from_settings(Settings(redis_url=redis_server.url, llm_api_keys=TEST_KEYS)), dead)) == {}


# --- tc_llm_key_consumers -----------------------------------------------------------------------------------------
def consumers(collector: KeyConsumersCollector) -> dict[str, float]:
    return {dict(labels)["key"]: value for (name, labels), value in exposition(collector).items()
            if name == "tc_llm_key_consumers"}


def test_key_consumers_follow_a_real_workers_presence(isolated_redis, base_env, log_dir):
    """A Celery worker on `llm.test-a` only: test-a has one consumer, test-b none; the worker stops: none."""
    settings = Settings(redis_url=isolated_redis.url, llm_api_keys=TEST_KEYS)
    collector = KeyConsumersCollector(KeyPool.from_settings(settings), isolated_redis.client)
    assert consumers(collector) == {"test-a": 0.0, "test-b": 0.0}
    worker = Proc("worker-alerts", [sys.executable, "-m", "workers", "-Q", "llm.test-a", "--hostname",
                                    "alerts-a@%h", "--concurrency", "1"], isolated_redis.env(base_env), log_dir)
    try:
        wait_for(lambda: worker.alive() and consumers(collector) == {"test-a": 1.0, "test-b": 0.0}, 60,
                 lambda: f"the worker's presence (alive: {worker.alive()}): {consumers(collector)}")
        assert worker.stop() == 0
        wait_for(lambda: consumers(collector) == {"test-a": 0.0, "test-b": 0.0}, 15,
                 lambda: f"no consumer once the worker stopped: {consumers(collector)}")
    finally:
        worker.stop()


def test_key_consumers_count_live_presence_keys_only(isolated_redis, tmp_path):
    """Presence documents as `workers.events.Presence` writes them: each live worker on a key's queue counts once;
    an expired one, a malformed one and another queue do not; a key with `enabled: false` is not reported."""
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(json.dumps({"keys": [{"id": "a", "secret": "sk-alerts-test-aaaa"},
                                              {"id": "b", "secret": "sk-alerts-test-bbbb"},
                                              {"id": "off", "secret": "sk-alerts-test-cccc", "enabled": False}]}))
    r = isolated_redis.client
    collector = KeyConsumersCollector(KeyPool.from_settings(Settings(redis_url=isolated_redis.url,
                                                                     llm_keys_file=keys_file)), r)

    def presence(hostname: str, queues: Any, ttl_ms: int = 60_000) -> None:
        r.set(names.worker_key(hostname), json.dumps({"hostname": hostname, "pid": 1, "queues": queues}), px=ttl_ms)

    assert consumers(collector) == {"a": 0.0, "b": 0.0}
    presence("w1@host", ["llm.a", "llm.b", "results"])
    presence("w2@host", ["llm.a"])
    presence("w3@host", ["results", "llm.off"])
    assert consumers(collector) == {"a": 2.0, "b": 1.0}
    presence("w4@host", ["llm.b"], ttl_ms=300)  # a worker that stops renewing
    r.set(names.worker_key("broken@host"), b"{not json")
    r.set(names.worker_key("odd@host"), json.dumps({"hostname": "odd@host", "queues": "llm.b"}))
    assert consumers(collector) == {"a": 2.0, "b": 2.0}
    wait_for(lambda: consumers(collector) == {"a": 2.0, "b": 1.0}, 10,
             lambda: f"the expired presence no longer counted: {consumers(collector)}")
