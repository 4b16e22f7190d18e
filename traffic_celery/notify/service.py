"""The `notify` process: incident events and camera states from Redis to MQTT and to the webhook tasks.

Incidents: every `incident` event the recorders publish is also appended to the Redis stream
`tc:incidents:events` (capped), and this process reads it in the consumer group `notify` (several notifiers
share the work; one that dies leaves its unacknowledged entries pending and reads them again when it restarts
under the same name). An entry is acknowledged once it is handed to the MQTT publisher's queue and to Celery,
so a notifier that was down catches up with what happened meanwhile, in order, instead of missing it as a
pub/sub listener would.

Camera states: read from the camera registry every `TC_NOTIFY_STATE_INTERVAL` seconds; a change is published
(retained) to `<prefix>/<camera>/state`, and all of them again after each reconnection to the broker, so the
retained topics converge to the registry's states (a state shorter than the interval may go unseen).

A bad entry (not an incident) is logged and acknowledged, never retried forever. Redis going away is logged once
and retried; the broker going away is :class:`MqttPublisher`'s business (bounded queue).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, cast

import redis
from pydantic import ValidationError

from traffic_celery import names
from traffic_celery.broker.config import producer_app
from traffic_celery.notify import webhooks
from traffic_celery.notify.mqtt import MqttPublisher
from traffic_celery.protocol import Incident
from traffic_celery.registry import CameraRegistry
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

GROUP = "notify"
BATCH = 100


class Notifier:
    def __init__(self, settings: Settings, r: redis.Redis, consumer: str | None = None):
        self._settings, self._redis = settings, r
        self.consumer = consumer or f"notify@{socket.gethostname()}"
        self.targets = webhooks.load_targets(settings.webhooks_file)
        self._gate = webhooks.Gate(r, settings.webhook_cooldown)
        self._celery = producer_app(settings) if self.targets else None
        self._registry = CameraRegistry(r)
        self._states: dict[str, tuple[str, str]] = {}
        self._republish = threading.Event()
        self.mqtt = MqttPublisher(settings, client_id=f"traffic_celery-{self.consumer}",
                                  on_connect=self._republish.set) if settings.mqtt_url else None
        self._stop = threading.Event()
        self.handled = 0
        self._redis_down = False

    # --- lifecycle ------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until :meth:`stop`: the incident stream in this thread, camera states in another."""
        if self.mqtt is None and not self.targets:
            logger.warning("notify has nothing to do: set TC_MQTT_URL and/or TC_WEBHOOKS_FILE")
        logger.info("notify %s: MQTT %s; %d webhook target(s)%s", self.consumer,
                    self.mqtt.target.masked if self.mqtt else "off", len(self.targets),
                    f" ({', '.join(self.targets)})" if self.targets else "")
        if self.mqtt is not None:
            self.mqtt.start()
            threading.Thread(target=self._watch_states, name="notify-states", daemon=True).start()
        try:
            while not self._stop.is_set():
                try:
                    self.poll(block_ms=1000)
                    if self._redis_down:
                        logger.info("notify: Redis answers again")
                        self._redis_down = False
                except redis.RedisError as exc:
                    if not self._redis_down:
                        logger.warning("notify: cannot read the incident stream (%s); retrying", exc)
                        self._redis_down = True
                    self._stop.wait(1.0)
        finally:
            if self.mqtt is not None:
                self.mqtt.stop()

    def stop(self) -> None:
        self._stop.set()

    # --- incidents ------------------------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(names.INCIDENT_STREAM, GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def poll(self, block_ms: int = 0) -> int:
        """Handle this consumer's pending entries, then new ones (waiting up to `block_ms`, 0: not at all); how
        many."""
        self._ensure_group()
        handled = 0
        for start in ("0", ">"):
            while True:
                reply = self._redis.xreadgroup(GROUP, self.consumer, {names.INCIDENT_STREAM: start}, count=BATCH,
                                               block=block_ms if start == ">" and block_ms > 0 else None)
                streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", reply)
                entries = streams[0][1] if streams else []
                if not entries:
                    break
                for entry_id, fields in entries:
                    self._handle(entry_id, fields)
                    handled += 1
                if start == ">":
                    break
        self.handled += handled
        return handled

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            incident = Incident.model_validate_json(fields.get(b"incident", b""))
        except ValidationError as exc:
            logger.warning("notify: entry %s of %s is not an incident (%s); skipped", entry_id.decode(),
                           names.INCIDENT_STREAM, exc.errors()[0]["msg"] if exc.errors() else exc)
        else:
            self.deliver(incident)
        self._redis.xack(names.INCIDENT_STREAM, GROUP, entry_id)

    def deliver(self, incident: Incident) -> dict[str, str]:
        """MQTT, then each webhook target: what happened per target (`sent`, `suppressed`, `not wanted`)."""
        if self.mqtt is not None:
            self.mqtt.publish_incident(incident)
        outcomes: dict[str, str] = {}
        for target in self.targets.values():
            if not target.wants(incident):
                outcomes[target.name] = "not wanted"
            elif not self._gate.admit(target, incident):
                outcomes[target.name] = "suppressed"
                webhooks.count(self._redis, target.name, "suppressed")
                logger.info("webhook to %s for incident %s (%s) suppressed: camera %s paged it less than its "
                            "cooldown ago", target.name, incident.incidentId, incident.state, incident.cameraId)
            else:
                assert self._celery is not None
                self._celery.send_task("workers.webhooks.deliver", queue=names.WEBHOOKS_QUEUE,
                                       args=[target.name, f"incident.{incident.state}",
                                             incident.model_dump(mode="json")])
                outcomes[target.name] = "sent"
        return outcomes

    # --- camera states --------------------------------------------------------------------------------------
    def _watch_states(self) -> None:
        assert self.mqtt is not None
        while not self._stop.is_set():
            try:
                self.publish_states(force=self._republish.is_set())
                self._republish.clear()
            except redis.RedisError as exc:
                logger.debug("notify: cannot read camera states (%s)", exc)
            self._stop.wait(self._settings.notify_state_interval)

    def publish_states(self, force: bool = False) -> int:
        """Publish the cameras whose state changed (all with `force`); a removed camera's retained state is
        cleared (an empty retained message). How many were published."""
        assert self.mqtt is not None
        cameras: list[dict[str, Any]] = self._registry.describe()
        current = {str(c["cameraId"]): (str(c["state"]), str(c.get("message") or "")) for c in cameras}
        published = 0
        for cid, (state, message) in current.items():
            if force or self._states.get(cid) != (state, message):
                self.mqtt.publish_state(cid, state, message)
                published += 1
        for cid in set(self._states) - set(current):
            self.mqtt.publish_raw(self.mqtt.topic("state", cid), "", retain=True)
        self._states = current
        return published


def main() -> None:
    """`traffic-celery notify` (or `python -m traffic_celery.notify`): until SIGTERM/SIGINT."""
    import signal  # noqa: PLC0415

    from traffic_celery.logs import setup_logging  # noqa: PLC0415
    from traffic_celery.redis_conn import connect  # noqa: PLC0415
    from traffic_celery.settings import get_settings  # noqa: PLC0415
    from traffic_celery.telemetry import instruments  # noqa: PLC0415

    settings = get_settings()
    setup_logging(settings, "notify")
    instruments.configure(settings)
    try:
        notifier = Notifier(settings, connect(settings))
    except ValueError as exc:  # a bad TC_MQTT_URL or webhooks file: one line, what to fix
        logger.error("notify cannot start: %s", exc)
        raise SystemExit(2) from exc
    signal.signal(signal.SIGTERM, lambda *_: notifier.stop())
    signal.signal(signal.SIGINT, lambda *_: notifier.stop())
    notifier.run()
