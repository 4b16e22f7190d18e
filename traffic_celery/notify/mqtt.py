"""Incident events and camera states on an MQTT broker (paho-mqtt), for Home Assistant, Node-RED and the like.

Topics, under the prefix `TC_MQTT_PREFIX` (default `traffic_celery`):

- `<prefix>/availability`: `online` / `offline`, retained; `offline` is also the connection's last will, so
  subscribers learn that the notifier died without a word;
- `<prefix>/<camera>/incidents`: every `incident` event (`state` new, update or end), the JSON of the WebSocket
  protocol's `Incident`, QoS 1, not retained (an event is not a state);
- `<prefix>/<camera>/state`: the camera's state (`{"cameraId", "state", "message", "at"}`), QoS 1, retained, so a
  subscriber that connects later learns every camera's current state at once.

Publishing never blocks the caller: paho's own network thread sends, and while the broker is away paho keeps the
QoS 1 messages in its outgoing queue and sends them when it is back (a message the broker had not acknowledged is
sent again, so a subscriber may see it twice, never zero times: QoS 1 is "at least once"). The queue is bounded
(`TC_MQTT_QUEUE`): beyond it new messages are dropped and counted (`dropped`, and
`tc_mqtt_messages_total{outcome="dropped"}`), so an hour without a broker costs memory no more than the bound.

`TC_MQTT_URL` is `mqtt://[user:password@]host[:1883]` or `mqtts://...` (TLS, port 8883 by default, CA from
`TC_MQTT_CA_FILE` or the system's). The password is never logged: logs and errors show the URL masked.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from traffic_celery.protocol import Incident
from traffic_celery.settings import Settings
from traffic_celery.telemetry import instruments

logger = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True)
class MqttTarget:
    """Where and how to connect, parsed from `TC_MQTT_URL` (the password only here, never in `masked`)."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"TC_MQTT_URL must start with mqtt:// or mqtts:// (TLS), not {parts.scheme or '?'}://")
        tls = parts.scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise ValueError("TC_MQTT_URL has no host: use mqtt://host:1883")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError("TC_MQTT_URL has a bad port: use mqtt://host:1883") from exc
        return cls(parts.hostname, port, tls, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    @property
    def masked(self) -> str:
        user = f"{self.username}:***@" if self.username and self.password else \
            (f"{self.username}@" if self.username else "")
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def topics(prefix: str, camera_id: str | None = None) -> dict[str, str]:
    prefix = prefix.rstrip("/")
    found = {"availability": f"{prefix}/availability"}
    if camera_id is not None:
        found.update(incidents=f"{prefix}/{camera_id}/incidents", state=f"{prefix}/{camera_id}/state")
    return found


class MqttPublisher:
    """One connection to the broker, kept by paho's thread; `publish_*` return at once."""

    def __init__(self, settings: Settings, client_id: str, on_connect: Any = None):
        if not settings.mqtt_url:
            raise ValueError("MQTT is off: set TC_MQTT_URL, for example mqtt://127.0.0.1:1883")
        self.target = MqttTarget.parse(settings.mqtt_url.get_secret_value())
        self.prefix = settings.mqtt_prefix.rstrip("/")
        self.bound = settings.mqtt_queue
        self.published = 0
        self.dropped = 0
        self.connected = threading.Event()
        self._on_connect_hook = on_connect  # called (in paho's thread) after each (re)connection
        self._lock = threading.Lock()
        self._metrics = instruments.get().mqtt_messages
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        if self.target.tls:
            client.tls_set(ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.topic("availability"), "offline", qos=QOS, retain=True)
        client.max_queued_messages_set(self.bound)
        client.reconnect_delay_set(min_delay=1, max_delay=settings.mqtt_reconnect_max)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        self._client = client

    def topic(self, kind: str, camera_id: str | None = None) -> str:
        return topics(self.prefix, camera_id)[kind]

    def start(self) -> MqttPublisher:
        logger.info("MQTT: connecting to %s (topics under %s/)", self.target.masked, self.prefix)
        self._client.connect_async(self.target.host, self.target.port, keepalive=30)
        self._client.loop_start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Say `offline` (retained) and disconnect cleanly (a clean disconnect does not fire the last will)."""
        if self.connected.is_set():
            info = self._client.publish(self.topic("availability"), "offline", qos=QOS, retain=True)
            deadline = time.monotonic() + timeout
            while not info.is_published() and time.monotonic() < deadline and self.connected.is_set():
                self.connected.wait(0.05)  # paho's thread sends it; waiting on the event returns early if lost
        self._client.disconnect()
        self._client.loop_stop()

    def wait_until_sent(self, timeout: float) -> bool:
        """Whether every queued message was acknowledged by the broker within `timeout` (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._client._out_messages:  # noqa: SLF001  paho keeps no public count of it
                return True
            time.sleep(0.05)
        return False

    # --- what the notifier publishes -----------------------------------------------------------------------
    def publish_incident(self, incident: Incident) -> bool:
        return self._publish(self.topic("incidents", incident.cameraId), incident.model_dump_json(), retain=False)

    def publish_state(self, camera_id: str, state: str, message: str = "", at: float | None = None) -> bool:
        payload = json.dumps({"cameraId": camera_id, "state": state, "message": message,
                              "at": time.time() if at is None else at})
        return self._publish(self.topic("state", camera_id), payload, retain=True)

    def publish_raw(self, topic: str, payload: str, retain: bool = False) -> bool:
        """Any payload on any topic (an empty retained payload clears a retained topic)."""
        return self._publish(topic, payload, retain)

    def _publish(self, topic: str, payload: str, retain: bool) -> bool:
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            with self._lock:
                self.dropped += 1
                first = self.dropped == 1 or self.dropped % 1000 == 0
            self._metrics.labels("dropped").inc()
            if first:
                logger.warning("MQTT: %d messages waiting for %s (TC_MQTT_QUEUE); dropped %d so far, newest on %s",
                               self.bound, self.target.masked, self.dropped, topic)
            return False
        with self._lock:
            self.published += 1
        self._metrics.labels("queued" if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN else "sent").inc()
        return True

    # --- paho's callbacks (its thread) ----------------------------------------------------------------------
    def _connected(self, client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
                   _properties: Any) -> None:
        if reason.is_failure:
            logger.warning("MQTT: %s refused the connection: %s (check TC_MQTT_URL's user and password)",
                           self.target.masked, reason)
            return
        logger.info("MQTT: connected to %s", self.target.masked)
        client.publish(self.topic("availability"), "online", qos=QOS, retain=True)
        self.connected.set()
        if self._on_connect_hook is not None:
            try:
                self._on_connect_hook()
            except Exception:
                logger.exception("MQTT: the on-connect hook failed")

    def _disconnected(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
                      _properties: Any) -> None:
        if self.connected.is_set():
            logger.warning("MQTT: lost %s (%s); messages queue (at most %d) until it is back", self.target.masked,
                           reason, self.bound)
        self.connected.clear()
