"""Relays camera events from Redis pub/sub to this process's WebSocket clients.

One listener thread per web process pattern-subscribes to `tc:camera:*:events` and hands each message to the
clients subscribed to that camera, so every web process delivers every event whatever process produced it.
Each client has its own sender thread: events queue (bounded), `detection_result` frames keep only the newest
per camera and go at most `TC_WS_FRAME_RATE` per second per camera, so a slow client drops frames instead of
slowing the capture loop or other clients.

Pub/sub keeps nothing for a listener that is away. When the relay loses Redis (a restart, a network cut) and
comes back, it reads the assessments stored meanwhile from the alert history of every camera its clients watch
and relays those it has not relayed yet (by task id), so a client misses no `risk_assessment`. Frames and status
changes of that gap are not replayed: the next ones replace them.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Any, cast

import redis

from traffic_celery import names
from traffic_celery.protocol import EventType, ProtocolError, decode, encode
from traffic_celery.redis_conn import connect, listen
from traffic_celery.settings import Settings
from traffic_celery.telemetry import instruments

logger = logging.getLogger(__name__)

RECENT = 5000  # assessments remembered by task id, so a catch-up never relays one twice
CATCH_UP_MARGIN = 5.0  # seconds before the loss that a catch-up reads back (clock skew, in-flight publishes)


class Client:
    """One WebSocket connection: its subscriptions and an outbox drained by its own sender thread."""

    def __init__(self, ws: Any, client_id: int, max_events: int = 1000, frame_rate: float = 0.0):
        self.ws = ws
        self._frame_gap = 1.0 / frame_rate if frame_rate > 0 else 0.0  # per camera; 0: no limit
        self._frame_sent: dict[str, float] = {}
        self.id = client_id
        self._cameras: set[str] = set()  # the socket's thread changes it, the relay thread reads it: locked
        self._events: queue.Queue[str] = queue.Queue(max_events)
        self._frames: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.closed = threading.Event()
        self.frames_dropped = 0
        self.events_dropped = 0
        self._sender = threading.Thread(target=self._send_loop, name=f"ws-send-{client_id}", daemon=True)
        self._sender.start()

    def watch(self, camera_id: str) -> None:
        with self._lock:
            self._cameras.add(camera_id)

    def unwatch(self, camera_id: str) -> None:
        with self._lock:
            self._cameras.discard(camera_id)

    def watches(self, camera_id: str) -> bool:
        with self._lock:
            return camera_id in self._cameras

    @property
    def cameras(self) -> frozenset[str]:
        """A snapshot of the cameras this client watches."""
        with self._lock:
            return frozenset(self._cameras)

    def send(self, message: str) -> None:
        try:
            self._events.put_nowait(message)
        except queue.Full:
            self.events_dropped += 1
            instruments.get().ws_events_dropped.inc()
            logger.warning("client %s is not reading; dropped an event", self.id)
        self._wake.set()

    def send_frame(self, camera_id: str, message: str) -> None:
        with self._lock:
            if camera_id in self._frames:
                self.frames_dropped += 1
                instruments.get().ws_frames_dropped.inc()
            self._frames[camera_id] = message
        self._wake.set()

    def _send_loop(self) -> None:
        wait = 1.0
        try:
            while not self.closed.is_set():
                self._wake.wait(wait)
                self._wake.clear()
                while True:
                    try:
                        self.ws.send(self._events.get_nowait())
                    except queue.Empty:
                        break
                now = time.monotonic()
                wait = 1.0
                with self._lock:  # a camera's newest frame goes when its gap has passed; it waits otherwise
                    due = [cid for cid in self._frames if now - self._frame_sent.get(cid, 0.0) >= self._frame_gap]
                    frames = [self._frames.pop(cid) for cid in due]
                    for cid in due:
                        self._frame_sent[cid] = now
                    if self._frames:
                        wait = min(self._frame_sent[cid] + self._frame_gap - now for cid in self._frames)
                for frame in frames:
                    self.ws.send(frame)
        except Exception as exc:  # the socket closed under us; the receive loop ends the connection
            logger.debug("client %s sender stopped: %s", self.id, exc)
            self.closed.set()

    def close(self) -> None:
        self.closed.set()
        self._wake.set()
        self._sender.join(timeout=2)


class EventHub:
    """The process's pub/sub listener and its registry of clients."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._clients: dict[int, Client] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_id = 0
        self.ready = threading.Event()
        self._relayed: OrderedDict[str, None] = OrderedDict()  # task ids of the last RECENT assessments relayed
        self._lost_at: float | None = None

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="event-hub", daemon=True)
                self._thread.start()

    def add(self, ws: Any) -> Client:
        with self._lock:
            self._next_id += 1
            client = Client(ws, self._next_id, frame_rate=self._settings.ws_frame_rate)
            self._clients[client.id] = client
        instruments.get().ws_clients.inc()
        return client

    def remove(self, client: Client) -> None:
        with self._lock:
            gone = self._clients.pop(client.id, None)
        if gone is not None:
            instruments.get().ws_clients.dec()
        client.close()

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def deliver(self, camera_id: str, message: bytes | str) -> None:
        """Relay one event of the camera's channel to the clients watching it, by its decoded type: frames keep
        only the newest per client, an assessment goes once per task id. A message that is not an event of the
        protocol is logged and dropped; nothing a publisher sends can stop the relay."""
        try:
            event_type, data = decode(message)
        except ProtocolError as exc:
            logger.warning("dropped a message on camera %s's channel: %s", camera_id, exc)
            return
        text = message.decode() if isinstance(message, bytes) else message
        with self._lock:
            if event_type is EventType.RISK_ASSESSMENT and not self._first_time(data):
                return
            clients = list(self._clients.values())
        for client in clients:
            if not client.watches(camera_id):
                continue
            if event_type is EventType.DETECTION_RESULT:
                client.send_frame(camera_id, text)
            else:
                client.send(text)

    def _first_time(self, data: dict[str, Any]) -> bool:
        """Whether this assessment's task id was not relayed yet (and remember it). Holds the lock."""
        task_id = str(data.get("taskId"))
        if task_id in self._relayed:
            return False
        self._relayed[task_id] = None
        while len(self._relayed) > RECENT:
            self._relayed.popitem(last=False)
        return True

    def _on_lost(self) -> None:
        self.ready.clear()
        if self._lost_at is None:
            self._lost_at = time.time()

    def _on_ready(self) -> None:
        lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None:
            self._catch_up(lost_at - CATCH_UP_MARGIN)
        self.ready.set()

    def _catch_up(self, since: float) -> None:
        """Relay the assessments stored since `since` (epoch seconds) for the cameras clients watch."""
        with self._lock:
            clients = list(self._clients.values())
        cameras = set().union(*(c.cameras for c in clients))  # each a snapshot taken under its client's lock
        try:
            r = connect(self._settings)
            for camera_id in sorted(cameras):
                entries = cast("list[tuple[bytes, dict[bytes, bytes]]]",  # a sync client: never None
                               r.xrange(names.alerts_key(camera_id), min=str(int(since * 1000)), max="+"))
                for _id, fields in entries:
                    self.deliver(camera_id, encode(EventType.RISK_ASSESSMENT, json.loads(fields[b"assessment"])))
        except (redis.RedisError, ValueError, KeyError) as exc:
            logger.warning("could not relay the assessments stored while Redis was away: %s", exc)

    def _listen(self) -> None:
        listen(self._settings, self._stop,
               lambda channel, data: self.deliver(names.camera_from_channel(channel), data),
               patterns=[names.EVENTS_PATTERN], on_ready=self._on_ready, on_lost=self._on_lost,
               name="event relay")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=3)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
