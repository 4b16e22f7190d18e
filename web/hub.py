"""Relays camera events from Redis pub/sub to this process's WebSocket clients.

One listener thread per web process pattern-subscribes to `tc:camera:*:events` and hands each message to the
clients subscribed to that camera, so every web process delivers every event whatever process produced it.
Each client has its own sender thread: events queue (bounded), `detection_result` frames keep only the newest
per camera and go at most `TC_WS_FRAME_RATE` per second per camera, so a slow client drops frames instead of
slowing the capture loop or other clients.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Optional

from traffic_celery import instruments, names
from traffic_celery.redis_conn import listen
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)


class Client:
    """One WebSocket connection: its subscriptions and an outbox drained by its own sender thread."""

    def __init__(self, ws: Any, client_id: int, max_events: int = 1000, frame_rate: float = 0.0):
        self.ws = ws
        self._frame_gap = 1.0 / frame_rate if frame_rate > 0 else 0.0  # per camera; 0: no limit
        self._frame_sent: dict[str, float] = {}
        self.id = client_id
        self.cameras: set[str] = set()
        self._events: queue.Queue[str] = queue.Queue(max_events)
        self._frames: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.closed = threading.Event()
        self.frames_dropped = 0
        self.events_dropped = 0
        self._sender = threading.Thread(target=self._send_loop, name=f"ws-send-{client_id}", daemon=True)
        self._sender.start()

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
        self._thread: Optional[threading.Thread] = None
        self._next_id = 0
        self.ready = threading.Event()

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

    def deliver(self, camera_id: str, message: str) -> None:
        is_frame = message.startswith('{"type":"detection_result"')
        with self._lock:
            targets = [c for c in self._clients.values() if camera_id in c.cameras]
        for client in targets:
            if is_frame:
                client.send_frame(camera_id, message)
            else:
                client.send(message)

    def _listen(self) -> None:
        listen(self._settings, self._stop,
               lambda channel, data: self.deliver(names.camera_from_channel(channel), data.decode()),
               patterns=[names.EVENTS_PATTERN], on_ready=self.ready.set, on_lost=self.ready.clear,
               name="event relay")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=3)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
