"""Regression tests for the defects a review of the code found (each failed on the code before its fix):

- the event relay died on one message it could not handle, and that web process stopped relaying;
- a group was recorded as assessed before its task was enqueued, so after a broker outage it waited for
  `TC_REASSESS_INTERVAL`;
- the registry's read-then-write could write an old URL back over an operator's change, two concurrent adds both
  succeeded, and a camera whose source ended was released before it was disabled (another node could restart it);
- the router counted expired leases (killed workers) as calls in flight;
- a snapshot was served under any camera id.

Real Redis, real detector, real web tier: nothing of the project is mocked.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import redis
import requests
from kombu.exceptions import OperationalError

from traffic_celery import names, store
from traffic_celery.capture.loop import CaptureLoop
from traffic_celery.capture.node import CaptureNode
from traffic_celery.llm.keys import ApiKey, KeyPool
from traffic_celery.llm.limiter import KeyLimiter, prefix
from traffic_celery.llm.router import Router
from traffic_celery.protocol import Assessment, CameraState, CameraStatus, EventType, Job, encode
from traffic_celery.registry import CameraConfig, CameraRegistry
from traffic_celery.settings import Settings
from traffic_celery.vision.detection import Detector, shared_detector
from web.hub import EventHub

from .conftest import ASSETS_BUS, wait_for


class Socket:
    """The receiving end of a WebSocket as the relay sees it: whatever it is sent, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, message: str) -> None:
        self.sent.append(message)


def test_the_relay_survives_a_message_it_cannot_read(redis_server, redis_client):
    hub = EventHub(Settings(redis_url=redis_server.url))
    hub.ensure_started()
    try:
        wait_for(hub.ready.is_set, 10, "the relay to subscribe")
        socket = Socket()
        client = hub.add(socket)
        client.watch("relay-1")
        channel = names.events_channel("relay-1")
        for garbage in (b"\xff\xfe not utf-8", b"{not json", b'{"type": "no_such_event", "data": {}}', b"[]"):
            redis_client.publish(channel, garbage)
        status = encode(EventType.CAMERA_STATUS, CameraStatus.of("relay-1", CameraState.ONLINE, "streaming"))
        wait_for(lambda: redis_client.publish(channel, status) and status in socket.sent, 10,
                 "a valid event relayed after the garbage")
    finally:
        hub.stop()


def test_a_client_watching_and_unwatching_never_breaks_a_catch_up(redis_server):
    """Socket threads change a client's cameras while the relay reads them all (the catch-up after a Redis
    loss): every read is a snapshot taken under the client's lock."""
    hub = EventHub(Settings(redis_url=redis_server.url))
    clients = [hub.add(Socket()) for _ in range(4)]
    stop = threading.Event()

    def churn(client: Any, n: int) -> None:
        while not stop.is_set():
            for i in range(20):
                client.watch(f"cam-{n}-{i}")
            for i in range(20):
                client.unwatch(f"cam-{n}-{i}")

    threads = [threading.Thread(target=churn, args=(c, n), daemon=True) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            hub._catch_up(time.time())  # raises if a set changed size while it was read
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        hub.stop()


@pytest.fixture(scope="module")
def detector() -> Detector:
    return shared_detector(Settings())


def test_a_group_whose_enqueue_failed_is_due_again_on_the_next_frame(redis_server, redis_client, detector):
    frame = cv2.imread(str(ASSETS_BUS))  # a bus with people beside it: one traffic group
    sent: list[Job] = []
    broker_up = False

    def enqueue(job: Job) -> str:
        if not broker_up:
            raise OperationalError("the broker is away")
        sent.append(job)
        return "task"

    settings = Settings(redis_url=redis_server.url, reassess_interval=300, assess_min_interval=0)
    loop = CaptureLoop(CameraConfig(camera_id="outage", url="0"), settings, redis_client, lambda: detector,
                       enqueue)
    with pytest.raises(OperationalError):
        loop.analyse(frame, detector, ts=1000.0)
    broker_up = True
    loop.analyse(frame, detector, ts=1001.0)
    assert sent and sent[0].reason == "appeared", "the group must not wait TC_REASSESS_INTERVAL after an outage"


def test_a_late_verified_mark_never_writes_an_old_url_back(redis_client):
    registry = CameraRegistry(redis_client)
    old = CameraConfig(camera_id="cas-1", url="rtsp://old.example/stream")
    new = CameraConfig(camera_id="cas-1", url="rtsp://new.example/stream")
    lost = 0
    for _ in range(150):
        redis_client.hset(names.CAMERAS, "cas-1", old.to_json())
        barrier = threading.Barrier(2)

        def node() -> None:
            barrier.wait()
            registry.mark_verified(old)  # the capture node: its old source opened

        thread = threading.Thread(target=node)
        thread.start()
        barrier.wait()
        registry.put(new)  # the operator changes the URL at the same moment
        thread.join()
        current = registry.get("cas-1")
        assert current is not None
        lost += current.url != new.url
    registry.remove("cas-1")
    assert lost == 0, f"the operator's new URL was overwritten by the old one {lost} times in 150"


def test_of_two_concurrent_adds_exactly_one_wins(redis_client):
    registry = CameraRegistry(redis_client)
    for i in range(100):
        barrier = threading.Barrier(2)
        won: list[bool] = []

        def add(url: str) -> None:
            barrier.wait()
            won.append(registry.add(CameraConfig(camera_id=f"add-{i}", url=url)))

        threads = [threading.Thread(target=add, args=(f"rtsp://cam{n}.example/s",)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won) == [False, True]
        registry.remove(f"add-{i}")


def test_a_camera_whose_source_ended_is_disabled_before_its_lease_is_released(isolated_redis, tmp_path, detector):
    # its own database: the session's web tier is a capture node too and could otherwise take the camera
    redis_client = isolated_redis.client
    media = tmp_path / "media"
    media.mkdir()
    clip = media / "short.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(3):
        writer.write(cv2.resize(cv2.imread(str(ASSETS_BUS)), (320, 240)))
    writer.release()
    settings = Settings(redis_url=isolated_redis.url, media_dir=media, loop_files=False, file_pace="fast",
                        capture_heartbeat=0.1, capture_lease_ttl=5)
    registry = CameraRegistry(redis_client)
    owner = names.owner_key("ends")
    commands: list[str] = []
    watching = threading.Event()
    stop = threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(isolated_redis.url).monitor() as m:
            watching.set()
            for entry in m.listen():
                command = entry["command"]
                if "tc:cameras " in command and "HSET" in command.upper() or owner in command:
                    commands.append(command)
                if stop.is_set():
                    return

    threading.Thread(target=monitor, daemon=True).start()
    watching.wait(5)
    node = CaptureNode(settings, redis_client, lambda: detector, lambda job: "task").start()
    try:
        assert registry.add(CameraConfig(camera_id="ends", url=str(clip)))
        wait_for(lambda: (config := registry.get("ends")) is not None and not config.enabled, 30,
                 "the camera to be stopped when its file ended")
        wait_for(lambda: redis_client.get(owner) is None, 10, "the lease to be released")
        redis_client.ping()  # one more command, so the monitor sees the ones before it
    finally:
        stop.set()
        node.stop()
    disabled_at = next(i for i, c in enumerate(commands) if c.startswith(f"HSET {names.CAMERAS} ends ")
                       and '"enabled":false' in c)
    released_at = min(i for i, c in enumerate(commands) if c.startswith(f"DEL {owner}"))
    assert disabled_at < released_at, commands


def test_expired_leases_are_not_calls_in_flight(redis_client):
    key = ApiKey(id="lease-k", secret="sk-lease-test-secret-000000", max_in_flight=10)
    limiter = KeyLimiter(redis_client, margin=0.0, max_wait=10, lease_ttl=0.2)
    router = Router(redis_client, KeyPool([key]), limiter)
    redis_client.delete(prefix(key.id) + "leases")
    for _ in range(3):
        assert limiter.acquire(key).granted  # three calls whose workers die: their leases are never released
    assert router.loads([key])[0].in_flight == 3
    wait_for(lambda: router.loads([key])[0].in_flight == 0, 5, "the expired leases to stop counting")


def test_a_snapshot_is_served_only_under_its_own_camera(web, redis_server):
    r = redis.Redis.from_url(redis_server.url)
    jpeg = Path(ASSETS_BUS).read_bytes()
    image_key = store.store_image(r, jpeg, 60)
    store.store_assessment(r, Assessment(
        cameraId="snap-a", groupId="g1", groupIndex=0, taskId="snaptask-1", riskLevel="low", riskTypes=[],
        description="test", confidence=0.5, dangerObjectIds=[], llmLatency=0.1, llmModel="m", apiKeyId="k",
        frameTimestamp=time.time(), imageKey=image_key))
    own = requests.get(f"{web}/api/cameras/snap-a/alerts/snaptask-1/snapshot.jpg", timeout=5)
    assert own.status_code == 200 and own.content == jpeg
    other = requests.get(f"{web}/api/cameras/snap-b/alerts/snaptask-1/snapshot.jpg", timeout=5)
    assert other.status_code == 404 and other.json()["field"] == "taskId"
