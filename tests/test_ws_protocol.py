"""Bad WebSocket messages get an `error` and the connection stays open (old defect 12)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("raw, code", [
    ("{not json", "invalid_json"),
    (json.dumps([1, 2]), "invalid_message"),
    (json.dumps({"type": "dance"}), "unknown_type"),
    (json.dumps({"type": "ping", "data": "x"}), "invalid_message"),
    (json.dumps({"type": "start_stream", "data": {"cameraId": "../etc", "rtspUrl": "x.avi"}}), "invalid_camera_id"),
    (json.dumps({"type": "start_stream", "data": {"cameraId": None, "rtspUrl": "x.avi"}}), "invalid_camera_id"),
    (json.dumps({"type": "start_stream", "data": {"cameraId": 7}}), "invalid_url"),
    (json.dumps({"type": "stop_stream", "data": {"cameraId": "never-started"}}), "camera_not_running"),
    (json.dumps({"type": "start_stream", "data": {"cameraId": 7, "rtspUrl": "x.avi", "frameInterval": "fast"}}),
     "invalid_frame_interval"),
    (json.dumps({"type": "start_stream", "data": {"cameraId": 7, "rtspUrl": "x.avi", "frameInterval": 0}}),
     "invalid_frame_interval"),
    (json.dumps({"type": "check_camera", "data": {"cameraId": 7, "rtspUrl": ""}}), "invalid_url"),
    (json.dumps({"type": "ping", "data": {"pad": "x" * 200_000}}), "message_too_large"),
])
def test_bad_message_yields_error_and_socket_stays_open(web, ws_factory, raw, code):
    client = ws_factory(web)
    client.send_raw(raw)
    error = client.wait(lambda m: m["type"] == "error", 10, f"error {code}")
    assert error["data"]["code"] == code
    assert error["data"]["message"]
    client.send("ping", {"timestamp": 42})
    pong = client.wait(lambda m: m["type"] == "pong", 10, "pong")
    assert pong["data"] == {"timestamp": 42}


def test_non_numeric_camera_id_is_accepted(web, ws_factory, sample_video):
    """A name such as 'gate-north' is a valid cameraId (the old system closed the socket on it)."""
    client = ws_factory(web)
    client.send("start_stream", {"cameraId": "gate-north", "rtspUrl": str(sample_video)})
    try:
        status = client.wait(lambda m: m["type"] == "camera_status", 60, "camera_status")
        assert status["data"]["cameraId"] == "gate-north" and status["data"]["status"] == 1
    finally:
        client.send("stop_stream", {"cameraId": "gate-north"})
        client.wait(lambda m: m["type"] == "stream_stopped", 20, "stream_stopped")
