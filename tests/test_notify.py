"""Telling people: MQTT against a real broker (a Mosquitto of the test's own, on a free port) and webhooks against
a real HTTP receiver, delivered by a real Celery worker process.

MQTT: a subscriber sees an incident's new/update/end in order, the retained camera state (also when it connects
later), `online` on the availability topic and the last will `offline` when the notifier process is killed; a
broker restart loses nothing within the publisher's bound, and what is beyond the bound is counted as dropped.

Webhooks: the signature verifies (checked here with hmac, not with the project's code), 500s are retried with the
same delivery id, the last failure goes to the dead letter, a 4xx is dead at once, the cooldown holds per target
and camera, and neither the secret nor the URL's token appears in any log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Proc, wait_for
from traffic_celery import names, store
from traffic_celery.embedded_redis import free_port
from traffic_celery.notify import webhooks
from traffic_celery.notify.mqtt import MqttPublisher, MqttTarget
from traffic_celery.notify.service import Notifier
from traffic_celery.protocol import CameraState, ConflictFacts, Incident
from traffic_celery.registry import CameraConfig, CameraRegistry
from traffic_celery.settings import Settings

PREFIX = "tc-test"
SECRET = "whsec-test-0123456789abcdef"
URL_TOKEN = "T0KEN-in-the-path-5f3a9c"


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- an MQTT broker of the test's own -------------------------------------------------------------------------

def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
    if found is None:
        pytest.fail("no MQTT broker binary: run `make mosquitto` (Debian's mosquitto package, the service not started)")
    return found


class Broker:
    """Mosquitto on a free port, with persistence in a folder of the test (so a restart keeps sessions)."""

    def __init__(self, folder: Path, log_dir: Path):
        self.port = free_port()
        self.folder = folder
        self.log_dir = log_dir
        # started as root, mosquitto drops to its own user, which must reach and write its persistence folder:
        # one under /tmp that everybody may enter (pytest's own folders are private to their owner)
        self.data = Path(tempfile.mkdtemp(prefix="tc-mosquitto-"))
        self.data.chmod(0o777)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {self.data}/\nautosave_interval 1\n")
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc = Proc("mosquitto", [mosquitto_binary(), "-c", str(self.config)], {}, self.log_dir)
        wait_for(lambda: port_open(self.port), 10, "mosquitto to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)  # mosquitto saves its persistence file on the way out
            wait_for(lambda: not port_open(self.port), 10, "mosquitto to stop")
            self.proc = None


@pytest.fixture()
def broker(tmp_path, log_dir) -> Iterator[Broker]:
    b = Broker(tmp_path, log_dir).start()
    try:
        yield b
    finally:
        b.stop()
        shutil.rmtree(b.data, ignore_errors=True)


class Subscriber:
    """A real MQTT client that records what it receives (topic, payload, retained)."""

    def __init__(self, port: int, topic: str, client_id: str | None = None, clean: bool = True):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{uuid.uuid4().hex[:8]}",
                             clean_session=clean)
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.connect(("127.0.0.1"), port, keepalive=10)
        client.loop_start()
        self.client = client
        wait_for(self.subscribed.is_set, 10, "the subscription")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def incident(camera: str, state: str, n: int = 0, severity: str = "high", incident_id: str | None = None) -> Incident:
    now = time.time()
    return Incident(incidentId=incident_id or f"{camera}-inc-{n}", cameraId=camera, state=state, severity=severity,
                    openedBy="near_miss", startedAt=now - 2, updatedAt=now, endedAt=now if state == "end" else None,
                    zones=["crosswalk"], classes=["car", "person"], trackIds=[1, 2],
                    conflictType="vehicle-pedestrian",
                    metrics=ConflictFacts(conflictType="vehicle-pedestrian", trackIds=[1, 2],
                                          classes=["car", "person"], ttc=0.8, pet=0.6, distance=2.0,
                                          minDistance=1.1, relativeSpeed=30.0, speeds={}, units="metric",
                                          severity=severity, point=[100.0, 200.0]))


def settings_for(isolated_redis, **extra: Any) -> Settings:
    return Settings(redis_url=isolated_redis.url, mqtt_prefix=PREFIX, notify_state_interval=0.2, **extra)


def run_notifier(notifier: Notifier) -> threading.Thread:
    thread = threading.Thread(target=notifier.run, daemon=True)
    thread.start()
    return thread


# --- MQTT -----------------------------------------------------------------------------------------------------

def test_the_mqtt_url_is_parsed_and_shown_masked():
    target = MqttTarget.parse("mqtts://ha:p%40ss-secret@broker.lan")
    assert (target.host, target.port, target.tls, target.username, target.password) == \
        ("broker.lan", 8883, True, "ha", "p@ss-secret")
    assert "secret" not in target.masked and target.masked == "mqtts://ha:***@broker.lan:8883"
    with pytest.raises(ValueError, match="mqtt:// or mqtts://"):
        MqttTarget.parse("http://broker.lan")


def test_a_subscriber_sees_incidents_in_order_the_retained_state_and_availability(broker, isolated_redis):
    r = isolated_redis.client
    registry = CameraRegistry(r)
    assert registry.add(CameraConfig(camera_id="cam-a", url="rtsp://cam-a.example/s"))
    registry.set_status("cam-a", CameraState.ONLINE, "streaming", "node-1")
    notifier = Notifier(settings_for(isolated_redis, mqtt_url=broker.url), r, consumer="notify-test")
    sub = Subscriber(broker.port, f"{PREFIX}/#")
    thread = run_notifier(notifier)
    try:
        wait_for(lambda: (b"online", True) in sub.on(f"{PREFIX}/availability") or
                 (b"online", False) in sub.on(f"{PREFIX}/availability"), 15, "availability online")
        state = wait_for(lambda: sub.on(f"{PREFIX}/cam-a/state"), 10, "the camera's state")
        assert json.loads(state[-1][0])["state"] == "online"
        for s in ("new", "update", "end"):
            store.publish_incident(r, incident("cam-a", s))
        got = wait_for(lambda: (m := sub.on(f"{PREFIX}/cam-a/incidents")) and len(m) >= 3 and m, 10,
                       lambda: f"three incident events (got {sub.messages})")
        assert [json.loads(p)["state"] for p, _ in got] == ["new", "update", "end"]
        assert not any(retained for _, retained in got)  # events are not retained
        registry.set_status("cam-a", CameraState.OFFLINE, "no frames for 10s", "node-1")
        wait_for(lambda: json.loads(sub.on(f"{PREFIX}/cam-a/state")[-1][0])["state"] == "offline", 10,
                 "the state change")
        late = Subscriber(broker.port, f"{PREFIX}/+/state")  # connects later: the retained state is there
        try:
            retained = wait_for(lambda: late.on(f"{PREFIX}/cam-a/state"), 10, "the retained state")
            assert retained[0][1] and json.loads(retained[0][0])["state"] == "offline"
        finally:
            late.close()
    finally:
        notifier.stop()
        thread.join(10)
        sub.close()
    # a clean stop says offline (retained); the stream entries were all acknowledged
    assert r.xpending(names.INCIDENT_STREAM, "notify")["pending"] == 0


def test_the_last_will_says_offline_when_the_notifier_is_killed(broker, isolated_redis, base_env, log_dir):
    sub = Subscriber(broker.port, f"{PREFIX}/availability")
    proc = Proc("notify", [sys.executable, "-m", "traffic_celery.notify"],
                isolated_redis.env({**base_env, "TC_MQTT_URL": broker.url, "TC_MQTT_PREFIX": PREFIX}), log_dir)
    try:
        wait_for(lambda: [p for p, _ in sub.on(f"{PREFIX}/availability")][-1:] == [b"online"], 30,
                 lambda: f"the notifier to say online ({proc.output()[-500:]})")
        proc.stop(signal.SIGKILL)  # no clean disconnect: the broker publishes the will
        wait_for(lambda: [p for p, _ in sub.on(f"{PREFIX}/availability")][-1:] == [b"offline"], 10,
                 "the last will")
    finally:
        proc.stop()
        sub.close()


def test_a_broker_restart_loses_nothing_within_the_bound_and_counts_what_is_beyond(broker, isolated_redis):
    bound = 8
    publisher = MqttPublisher(settings_for(isolated_redis, mqtt_url=broker.url, mqtt_queue=bound),
                              client_id="pub-restart").start()
    # the subscriber keeps its session (and its QoS 1 messages) across the restart: mosquitto persists it
    sub = Subscriber(broker.port, f"{PREFIX}/cam-r/incidents", client_id="sub-restart", clean=False)
    try:
        wait_for(publisher.connected.is_set, 10, "the publisher to connect")
        publisher.publish_incident(incident("cam-r", "new", 0))
        wait_for(lambda: len(sub.on(f"{PREFIX}/cam-r/incidents")) == 1, 10, "the first event")
        broker.stop()
        wait_for(lambda: not publisher.connected.is_set(), 10, "the publisher to notice")
        accepted = [publisher.publish_incident(incident("cam-r", "update", n)) for n in range(1, 13)]
        assert accepted == [True] * bound + [False] * (12 - bound)
        assert publisher.dropped == 12 - bound
        broker.start()  # same port, same persistence
        wait_for(publisher.connected.is_set, 20, "the publisher to reconnect")
        assert publisher.wait_until_sent(10)
        expected = {f"cam-r-inc-{n}" for n in range(0, bound + 1)}
        wait_for(lambda: {json.loads(p)["incidentId"] for p, _ in sub.on(f"{PREFIX}/cam-r/incidents")} == expected,
                 20, lambda: f"the {bound} queued events after the restart "
                             f"(got {sorted({json.loads(p)['incidentId'] for p, _ in sub.on(f'{PREFIX}/cam-r/incidents')})})")
    finally:
        publisher.stop()
        sub.close()


# --- webhooks -------------------------------------------------------------------------------------------------

class Receiver:
    """A real HTTP server answering from a script of status codes (then 200), recording every request."""

    def __init__(self, script: list[int] | None = None):
        self.requests: list[dict[str, Any]] = []
        self.script = list(script or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "at": time.time()})
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/{URL_TOKEN}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    try:
        yield rec
    finally:
        rec.close()


def write_targets(path: Path, targets: list[dict[str, Any]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"targets": targets}))
    return path


@pytest.fixture()
def webhook_system(isolated_redis, base_env, log_dir, tmp_path, receiver) -> Iterator[dict[str, Any]]:
    """A worker on the `webhooks` queue of an isolated database, and the notifier's settings, sharing one targets
    file (which a test may rewrite before it sends anything)."""
    targets = write_targets(tmp_path / "webhooks.yaml", [
        {"name": "ops", "url": receiver.url, "secret": SECRET, "events": ["new", "end"], "minSeverity": "medium",
         "cooldown": 60},
        {"name": "chat", "url": receiver.url, "format": "slack", "events": ["new"], "cameras": ["cam-s"]}])
    env = isolated_redis.env({**base_env, "TC_WEBHOOKS_FILE": str(targets), "TC_WEBHOOK_BACKOFF": "0.2",
                              "TC_WEBHOOK_MAX_RETRIES": "2"})
    worker = Proc("webhook-worker", [sys.executable, "-m", "workers", "-Q", names.WEBHOOKS_QUEUE, "--hostname",
                                     f"webhooks-{uuid.uuid4().hex[:6]}@%h", "--concurrency", "2"], env, log_dir)
    try:
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the webhook worker")
        settings = Settings(redis_url=isolated_redis.url, webhooks_file=targets, webhook_backoff=0.2,
                            webhook_max_retries=2)
        yield {"worker": worker, "settings": settings, "r": isolated_redis.client, "targets": targets}
    finally:
        worker.stop()
    for secret in (SECRET, URL_TOKEN):
        assert secret not in worker.output(), "a webhook secret in the worker's log"


def stats(r: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(names.WEBHOOK_STATS).items()}


def test_webhooks_are_signed_retried_on_500_and_dead_lettered_after_the_last_retry(webhook_system, receiver,
                                                                                   caplog):
    r = webhook_system["r"]
    notifier = Notifier(webhook_system["settings"], r)
    receiver.script = [500, 500]  # two failures, then 200: delivered on the third attempt
    assert notifier.deliver(incident("cam-w", "new", 1)) == {"ops": "sent", "chat": "not wanted"}
    wait_for(lambda: stats(r).get("ops:delivered") == 1, 30, lambda: f"delivery after retries ({stats(r)})")
    assert len(receiver.requests) == 3 and stats(r).get("ops:retried") == 2
    deliveries = {req["headers"][webhooks.DELIVERY_HEADER] for req in receiver.requests}
    assert len(deliveries) == 1  # the same delivery id on every attempt
    for req in receiver.requests:  # verified with hmac here, independently of the project's code
        ts = req["headers"][webhooks.TIMESTAMP_HEADER]
        expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + req["body"], hashlib.sha256).hexdigest()
        assert req["headers"][webhooks.SIGNATURE_HEADER] == expected
        assert abs(time.time() - int(ts)) < 60
        assert json.loads(req["body"])["incidentId"] == "cam-w-inc-1"
    assert webhooks.verify(SECRET, receiver.requests[-1]["body"], receiver.requests[-1]["headers"][
        webhooks.TIMESTAMP_HEADER], receiver.requests[-1]["headers"][webhooks.SIGNATURE_HEADER])
    assert not webhooks.verify(SECRET, receiver.requests[-1]["body"] + b" ", receiver.requests[-1]["headers"][
        webhooks.TIMESTAMP_HEADER], receiver.requests[-1]["headers"][webhooks.SIGNATURE_HEADER])
    old = int(time.time()) - 3600  # a replayed request, correctly signed an hour ago, is refused
    assert not webhooks.verify(SECRET, b"{}", str(old), webhooks.sign(SECRET, old, b"{}"))

    receiver.requests.clear()
    receiver.script = [500] * 10  # never recovers: 1 + 2 retries, then the dead letter
    notifier.deliver(incident("cam-x", "new", 2))
    wait_for(lambda: stats(r).get("ops:dead") == 1, 30, lambda: f"the dead letter ({stats(r)})")
    assert len(receiver.requests) == 3
    dead = r.xrange(names.WEBHOOK_DEAD)
    assert len(dead) == 1
    entry = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert entry["target"] == "ops" and entry["incidentId"] == "cam-x-inc-2" and entry["attempts"] == "3"
    assert "500" in entry["reason"] and URL_TOKEN not in json.dumps(entry) and SECRET not in json.dumps(entry)

    receiver.requests.clear()
    receiver.script = [404]  # the receiver refuses it: no retry
    notifier.deliver(incident("cam-y", "new", 3))
    wait_for(lambda: stats(r).get("ops:dead") == 2, 30, "the 404 to be dead at once")
    assert len(receiver.requests) == 1
    assert not any(URL_TOKEN in rec.getMessage() or SECRET in rec.getMessage() for rec in caplog.records)


def test_the_cooldown_pages_once_per_camera_and_keeps_the_end_of_what_it_paged(webhook_system, receiver):
    r = webhook_system["r"]
    notifier = Notifier(webhook_system["settings"], r)
    first, second = incident("cam-c", "new", 1), incident("cam-c", "new", 2)
    assert notifier.deliver(first)["ops"] == "sent"
    assert notifier.deliver(second)["ops"] == "suppressed"  # same camera within the cooldown
    assert notifier.deliver(incident("cam-d", "new", 3))["ops"] == "sent"  # another camera pages on its own
    assert notifier.deliver(incident("cam-c", "update", 1))["ops"] == "not wanted"  # ops wants new and end
    assert notifier.deliver(incident("cam-c", "end", 1))["ops"] == "sent"  # the end of what it paged
    assert notifier.deliver(incident("cam-c", "end", 2))["ops"] == "suppressed"  # not paged: not ended either
    low = incident("cam-e", "new", 4, severity="low")
    assert notifier.deliver(low)["ops"] == "not wanted"  # below minSeverity
    wait_for(lambda: stats(r).get("ops:delivered") == 3, 30, lambda: f"three deliveries ({stats(r)})")
    assert stats(r).get("ops:suppressed") == 2
    assert sorted((json.loads(q["body"])["incidentId"], json.loads(q["body"])["state"]) for q in receiver.requests) \
        == [("cam-c-inc-1", "end"), ("cam-c-inc-1", "new"), ("cam-d-inc-3", "new")]


def test_a_slack_target_gets_a_readable_text(webhook_system, receiver):
    notifier = Notifier(webhook_system["settings"], webhook_system["r"])
    assert notifier.deliver(incident("cam-s", "new", 9, severity="low"))["chat"] == "sent"
    wait_for(lambda: receiver.requests, 30, "the Slack-style delivery")
    text = json.loads(receiver.requests[0]["body"])["text"]
    assert "LOW vehicle–pedestrian started at camera cam-s (crosswalk)" in text and "TTC 0.8 s" in text
    assert webhooks.SIGNATURE_HEADER not in receiver.requests[0]["headers"]  # no secret: unsigned


@pytest.mark.parametrize(("content", "message"), [
    ("targets: [", "not valid YAML"),
    ("hooks: []", "must have a list `targets:`"),
    ("targets:\n  - {name: a, url: ftp://x}", "target #1 in .* is invalid: url: Value error, must be an http"),
    ("targets:\n  - {name: a, url: 'http://x', minSeverity: huge}", "minSeverity"),
    ("targets:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}", "appears twice"),
])
def test_a_bad_webhooks_file_is_answered_with_what_to_fix(tmp_path, content, message):
    path = tmp_path / "webhooks.yaml"
    path.write_text(content)
    with pytest.raises(webhooks.WebhookConfigError, match=message):
        webhooks.load_targets(path)


def test_the_notify_process_refuses_a_bad_mqtt_url_in_one_line(isolated_redis, base_env):
    done = subprocess.run([sys.executable, "-m", "traffic_celery.notify"], capture_output=True, text=True,
                          timeout=60, env=isolated_redis.env({**base_env, "TC_MQTT_URL": "http://user:pw-secret@x"}))
    assert done.returncode == 2
    assert "TC_MQTT_URL must start with mqtt:// or mqtts://" in done.stderr + done.stdout
    assert "pw-secret" not in done.stderr + done.stdout


def test_the_recorders_incidents_reach_mqtt_through_the_stream_even_when_the_notifier_starts_later(broker,
                                                                                                  isolated_redis):
    """The path of the system: a capture process's recorder publishes; a notifier that was not running yet
    still delivers what was recorded since its group exists (the stream keeps it), in order, once."""
    from traffic_celery.safety.recorder import Job, Recorder

    r = isolated_redis.client
    settings = settings_for(isolated_redis, mqtt_url=broker.url)
    first = Notifier(settings, r, consumer="notify-a")
    first.poll()  # creates the group: from now on nothing is missed
    recorder = Recorder(None, r).start()
    try:
        for state in ("new", "update", "end"):
            recorder.submit(Job(incident("cam-p", state, 7)))
        assert recorder.join(10)
    finally:
        recorder.stop()
    sub = Subscriber(broker.port, f"{PREFIX}/cam-p/incidents")
    notifier = Notifier(settings, r, consumer="notify-a")
    thread = run_notifier(notifier)
    try:
        got = wait_for(lambda: (m := sub.on(f"{PREFIX}/cam-p/incidents")) and len(m) >= 3 and m, 15,
                       "the recorded events")
        assert [json.loads(p)["state"] for p, _ in got] == ["new", "update", "end"]
        assert notifier.handled == 3
    finally:
        notifier.stop()
        thread.join(10)
        sub.close()
