"""The `/ws` endpoint: the WebSocket protocol (README, "The web tier").

Every bad message gets an `error {code, message}` reply and the connection stays open (the old system closed the
socket on a non-numeric camera id). Slow work (opening a camera to probe it) runs off the receive loop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app
from simple_websocket import ConnectionClosed, Server

from traffic_celery import names
from traffic_celery.capture.sources import UrlRefused, check_url, probe
from traffic_celery.protocol import (
    CameraState,
    CameraStatus,
    ClientMessageType,
    ErrorCode,
    ErrorEvent,
    EventType,
    encode,
)
from traffic_celery.registry import CameraConfig

from .hub import Client
from .runtime import Runtime, runtime
from .sock import sock

logger = logging.getLogger(__name__)

bp = Blueprint("ws", __name__)

MAX_MESSAGE = 64 * 1024  # bytes; the transport closes the socket only past 1 MiB (see create_app)


class MessageRefused(ValueError):
    def __init__(self, code: ErrorCode, message: str, camera_id: Any = None):
        super().__init__(message)
        self.code, self.message, self.camera_id = code, message, camera_id


def _camera_id(data: dict[str, Any]) -> str:
    raw = data.get("cameraId")
    try:
        return names.camera_id(raw)
    except ValueError:
        raise MessageRefused(ErrorCode.INVALID_CAMERA_ID,
                            f"cameraId {names.CAMERA_ID_RULE}, got {json.dumps(raw)[:40]}") from None


def _url(rt: Runtime, data: dict[str, Any], camera_id: str) -> str:
    url = data.get("rtspUrl")
    if not isinstance(url, str) or not url.strip():
        raise MessageRefused(ErrorCode.INVALID_URL, "rtspUrl must be a non-empty string: an rtsp:// or http(s):// URL, "
                            "a file in the media folder or a webcam index", camera_id)
    try:
        return check_url(url, rt.settings.media_dir)
    except UrlRefused as exc:
        raise MessageRefused(ErrorCode.INVALID_URL, str(exc), camera_id) from None


def _ping(rt: Runtime, client: Client, data: dict[str, Any]) -> None:
    client.send(encode(EventType.PONG, {"timestamp": data.get("timestamp")}))


def _frame_interval(data: dict[str, Any], camera_id: str) -> Any:
    value = data.get("frameInterval")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 60):
        raise MessageRefused(ErrorCode.INVALID_FRAME_INTERVAL, "frameInterval must be a number of seconds in (0, 60]; "
                            "leave it out for the server's default", camera_id)
    return value


def _current_status(rt: Runtime, client: Client, camera_id: str, note: str) -> None:
    """Tell one client the camera's last known state (a late viewer need not wait for the next change)."""
    status = rt.cameras.status(camera_id)
    state = CameraState(status.get("state", CameraState.STARTING))
    client.send(encode(EventType.CAMERA_STATUS,
                       CameraStatus.of(camera_id, state, f"{note}: {status.get('message', state)}")))


def _start_stream(rt: Runtime, client: Client, data: dict[str, Any]) -> None:
    camera_id = _camera_id(data)
    url = _url(rt, data, camera_id)
    config = CameraConfig(cameraId=camera_id, url=url, frameInterval=_frame_interval(data, camera_id))
    client.watch(camera_id)  # subscribe first, so the camera's first status reaches this client
    previous = rt.cameras.put(config)  # the capture node holding (or claiming) the camera does the rest
    if previous is not None and previous.same_source(config) and previous.enabled:
        _current_status(rt, client, camera_id, "already running; subscribed")


def _stop_stream(rt: Runtime, client: Client, data: dict[str, Any]) -> None:
    camera_id = _camera_id(data)
    was = rt.cameras.set_enabled(camera_id, False)  # stays registered (stopped), so the grid still lists it
    if was is None or not was.enabled:
        raise MessageRefused(ErrorCode.CAMERA_NOT_RUNNING, f"camera {camera_id} is not running", camera_id)


def _subscribe(rt: Runtime, client: Client, data: dict[str, Any]) -> None:
    camera_id = _camera_id(data)
    client.watch(camera_id)
    client.send(encode(EventType.SUBSCRIBED, {"cameraId": camera_id}))
    if rt.cameras.get(camera_id) is not None:
        _current_status(rt, client, camera_id, "subscribed")


def _unsubscribe(rt: Runtime, client: Client, data: dict[str, Any]) -> None:
    camera_id = _camera_id(data)
    client.unwatch(camera_id)
    client.send(encode(EventType.UNSUBSCRIBED, {"cameraId": camera_id}))


def _check_camera(rt: Runtime, client: Client, data: dict[str, Any]) -> None:
    """Probe off the receive loop: a thread opens the source and reads a frame, within `probe_timeout`."""
    camera_id = _camera_id(data)
    url = _url(rt, data, camera_id)

    def run() -> None:
        ok, message = probe(url, rt.settings.probe_timeout)
        state = CameraState.REACHABLE if ok else CameraState.UNREACHABLE
        client.send(encode(EventType.CAMERA_STATUS, CameraStatus.of(camera_id, state, message)))

    threading.Thread(target=run, name=f"probe-{camera_id}", daemon=True).start()


HANDLERS: dict[ClientMessageType, Callable[[Runtime, Client, dict[str, Any]], None]] = {
    ClientMessageType.PING: _ping, ClientMessageType.START_STREAM: _start_stream,
    ClientMessageType.STOP_STREAM: _stop_stream, ClientMessageType.SUBSCRIBE: _subscribe,
    ClientMessageType.UNSUBSCRIBE: _unsubscribe, ClientMessageType.CHECK_CAMERA: _check_camera,
}


def handle_message(rt: Runtime, client: Client, raw: Any) -> None:
    """Dispatch one client message; any fault becomes an `error` event for this client only."""
    try:
        size = len(raw.encode()) if isinstance(raw, str) else len(raw)
        if size > MAX_MESSAGE:
            raise MessageRefused(ErrorCode.MESSAGE_TOO_LARGE,
                                 f"message of {size} bytes refused: the largest accepted is "
                                 f"{MAX_MESSAGE} bytes (messages are small JSON objects)")
        try:
            msg = json.loads(raw)
        except (TypeError, ValueError):
            raise MessageRefused(ErrorCode.INVALID_JSON,
                                "message is not valid JSON; send {\"type\": ..., \"data\": {...}}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise MessageRefused(ErrorCode.INVALID_MESSAGE, "message must be an object with a string 'type'")
        data = msg.get("data", {})
        if not isinstance(data, dict):
            raise MessageRefused(ErrorCode.INVALID_MESSAGE, "'data' must be an object")
        handler = HANDLERS.get(msg["type"])  # a str-Enum key matches its str
        if handler is None:
            raise MessageRefused(ErrorCode.UNKNOWN_TYPE, f"unknown message type {msg['type'][:40]!r}; "
                                f"expected one of {sorted(t.value for t in HANDLERS)}")
        handler(rt, client, data)
    except MessageRefused as exc:
        camera_id = None if exc.camera_id is None else str(exc.camera_id)
        client.send(encode(EventType.ERROR, ErrorEvent(code=exc.code, message=exc.message, cameraId=camera_id)))
    except Exception as exc:  # never let one message kill the connection
        logger.exception("failed to handle a client message")
        client.send(encode(EventType.ERROR, ErrorEvent(code=ErrorCode.INTERNAL_ERROR,
                                                       message=f"the server failed: {exc}")))


@sock.route("/ws", bp=bp)  # type: ignore[untyped-decorator]  # flask-sock is untyped
def websocket(ws: Server) -> None:
    rt = runtime(current_app)
    rt.hub.ensure_started()
    client = rt.hub.add(ws)
    try:
        client.send(encode(EventType.CONNECTION_ACK, {"clientId": client.id,
                                                      "sampleVideo": str(rt.settings.sample_video),
                                                      "frameInterval": rt.settings.frame_interval,
                                                      "process": os.getpid()}))
        while not client.closed.is_set():
            raw = ws.receive(timeout=1.0)
            if raw is not None:
                handle_message(rt, client, raw)
    except ConnectionClosed:
        pass
    finally:
        rt.hub.remove(client)
