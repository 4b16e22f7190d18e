"""Property-based fuzzing (hypothesis) of what clients send: WebSocket messages and REST bodies, against the
session's real web tier. Whatever arrives, the answer is a well-formed protocol message or a JSON error naming
what is wrong, never a 500 or a closed socket, and the process keeps serving.

`derandomize=True`: the same examples on every run, so a failure reproduces and the suite cannot flake.
"""

from __future__ import annotations

import json
import time

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import SAMPLE_VIDEO

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SERVER_TYPES = {"connection_ack", "pong", "error", "camera_status", "subscribed", "unsubscribed", "stream_stopped",
                "detection_result", "risk_assessment"}
CLIENT_TYPES = ["ping", "start_stream", "stop_stream", "subscribe", "unsubscribe", "check_camera"]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
camera_ids = st.from_regex(r"fz-[A-Za-z0-9_-]{1,8}", fullmatch=True) | json_values
# URLs that look like URLs: refused schemes, paths inside and outside the media folder, traversal, junk
urls = (st.sampled_from(["/etc/passwd", "../../etc/shadow", "file:///etc/hosts", "ftp://x/y", "data:,x",
                         "rtsp://", "http://", "999", "no-such.avi", "", " ", "concat:a|b", "subfile:,,0:0:a"])
        | st.text(max_size=60) | json_values)
data = st.fixed_dictionaries({}, optional={"cameraId": camera_ids, "rtspUrl": urls, "frameInterval": json_values,
                                           "timestamp": json_values})
messages = st.one_of(
    st.text(max_size=120),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(CLIENT_TYPES) | st.text(max_size=12)},
                          optional={"data": data | json_values}).map(json.dumps),
)


def test_websocket_messages_never_break_the_connection(web, ws_factory):
    client = ws_factory(web)
    counter = iter(range(10**9))

    @FUZZ
    @given(raw=messages)
    def check(raw: str) -> None:
        marker = next(counter)
        client.send_raw(raw)
        client.send("ping", {"timestamp": marker})  # the socket still reads, in order, after the fuzzed message
        deadline = time.monotonic() + 10
        while True:
            msg = client.next(max(0.05, deadline - time.monotonic()))
            assert msg is not None, f"no pong after {raw[:80]!r}"
            assert isinstance(msg, dict) and msg.get("type") in SERVER_TYPES, msg
            if msg["type"] == "error":
                assert isinstance(msg["data"]["code"], str) and msg["data"]["message"], msg
            if msg["type"] == "pong" and msg["data"].get("timestamp") == marker:
                return

    check()
    assert requests.get(web + "/api/health", timeout=5).ok


MEDIA = str(SAMPLE_VIDEO.parent.resolve())


def stored_url_ok(url: str) -> bool:
    """A stored camera URL is a webcam index, a network URL, or a file inside the media folder."""
    return url.isdigit() or url.split("://")[0].lower() in ("rtsp", "rtsps", "http", "https") or \
        url.startswith(MEDIA + "/")


def assert_json_error(r: requests.Response, body: object) -> None:
    assert r.status_code < 500, (body, r.status_code, r.text[:200])
    if r.status_code >= 400:
        doc = r.json()
        assert isinstance(doc["error"], str) and doc["error"], doc


bodies = st.fixed_dictionaries(
    {"enabled": st.just(False) | json_values},  # never True: a fuzzed camera must not start capturing
    optional={"cameraId": camera_ids, "url": urls, "frameInterval": json_values, "extra": json_values})


def test_rest_bodies_get_a_json_answer_never_a_500(web):
    @FUZZ
    @given(body=bodies | json_values)
    def create(body: object) -> None:
        r = requests.post(web + "/api/cameras", json=body, timeout=10)
        assert_json_error(r, body)
        assert r.status_code in (201, 400, 409), (body, r.status_code)
        if r.status_code == 201:
            created = r.json()
            assert created["enabled"] is False and stored_url_ok(created["url"]), created
            assert requests.delete(f"{web}/api/cameras/{created['cameraId']}", timeout=10).status_code == 204

    @FUZZ
    @given(raw=st.binary(max_size=300))
    def create_raw(raw: bytes) -> None:
        r = requests.post(web + "/api/cameras", data=raw, headers={"Content-Type": "application/json"},
                          timeout=10)
        assert_json_error(r, raw)
        assert r.status_code in (201, 400, 409), (raw, r.status_code)
        if r.status_code == 201:  # bytes that happened to be a valid body
            requests.delete(f"{web}/api/cameras/{r.json()['cameraId']}", timeout=10)

    create()
    create_raw()
    r = requests.post(web + "/api/cameras", json={"cameraId": "fz-target", "url": "vtest.avi", "enabled": False},
                      timeout=10)
    assert r.status_code == 201, r.text

    @FUZZ
    @given(body=st.fixed_dictionaries({}, optional={"url": urls, "frameInterval": json_values,
                                                    "enabled": st.just(False) | json_values,
                                                    "other": json_values}) | json_values)
    def change(body: object) -> None:
        r = requests.patch(web + "/api/cameras/fz-target", json=body, timeout=10)
        assert_json_error(r, body)
        assert r.status_code in (200, 400), (body, r.status_code)
        current = requests.get(web + "/api/cameras/fz-target", timeout=10).json()
        assert current["enabled"] is False and stored_url_ok(current["url"]), current

    change()
    assert requests.get(web + "/api/health", timeout=5).ok
