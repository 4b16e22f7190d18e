"""Token auth on REST, /metrics and the WebSocket: a Bearer header or the session cookie of /api/login, never a
token in the URL; loopback only without a token."""

from __future__ import annotations

import hashlib
import hmac
import json

import psutil
import pytest
import requests
import websocket

from .conftest import TEST_API_TOKENS, start_web, wait_for

TOKEN = TEST_API_TOKENS[0]
SESSION = hmac.new(TOKEN.encode(), b"tc-session-v1", hashlib.sha256).hexdigest()
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded_web(system_env, log_dir):
    proc, url = start_web({**system_env, "TC_API_TOKEN": TOKEN, "TC_CAPTURE_IN_WEB": "false"}, log_dir,
                          "web-token")
    try:
        yield url
    finally:
        proc.stop()


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


def ws_ack(base: str, **options) -> dict:
    """Open /ws with websocket-client `options` (header=, cookie=, origin=) and return its connection_ack."""
    ws = websocket.create_connection(ws_url(base), timeout=5, **options)
    try:
        msg = json.loads(ws.recv())
        assert msg["type"] == "connection_ack"
        return msg
    finally:
        ws.close()


def ws_refused(base: str, **options) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(base), timeout=5, **options).close()
    return refused.value


def log_in(base: str) -> requests.Session:
    session = requests.Session()
    r = session.post(base + "/api/login", json={"token": TOKEN}, timeout=5)
    assert r.status_code == 204, r.text
    return session


@pytest.mark.parametrize("path", ["/api/cameras", "/api/keys", "/api/openapi.json", "/metrics"])
def test_routes_need_the_token(guarded_web, path):
    r = requests.get(guarded_web + path, timeout=5)
    assert r.status_code == 401 and r.json()["field"] == "token" and "Bearer" in r.json()["error"]
    assert "/api/login" in r.json()["error"]
    assert requests.get(guarded_web + path, headers={"Authorization": "Bearer wrong-token-xxxxxxx"},
                        timeout=5).status_code == 401
    assert requests.get(guarded_web + path, headers=BEARER, timeout=5).ok


def test_a_token_in_the_url_is_refused(guarded_web):
    for query in (f"?token={TOKEN}", f"?access_token={TOKEN}"):
        r = requests.get(guarded_web + "/api/cameras" + query, timeout=5)
        assert r.status_code == 401 and r.json()["field"] == "token"
        message = r.json()["error"]
        assert "Authorization" in message and "/api/login" in message and "logs" in message
        assert "\n" not in message and TOKEN not in r.text
    # even with a good header: the token is in a URL already, which is what must stop
    assert requests.get(guarded_web + f"/api/cameras?token={TOKEN}", headers=BEARER, timeout=5).status_code == 401
    assert ws_refused(guarded_web).status_code == 401  # no credentials at all
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(guarded_web) + f"?token={TOKEN}", timeout=5)
    assert refused.value.status_code == 401


def test_health_and_the_page_stay_open(guarded_web):
    assert requests.get(guarded_web + "/api/health", timeout=5).ok
    assert requests.get(guarded_web + "/", timeout=5).ok
    assert requests.get(guarded_web + "/static/app.js", timeout=5).ok


def test_websocket_with_the_authorization_header(guarded_web):
    assert ws_ack(guarded_web, header=[f"Authorization: Bearer {TOKEN}"])["data"]["clientId"]
    assert ws_refused(guarded_web, header=["Authorization: Bearer wrong-token-xxxxxxx"]).status_code == 401


def test_login_sets_an_httponly_strict_cookie_that_is_not_the_token(guarded_web):
    r = requests.post(guarded_web + "/api/login", json={"token": "wrong-token-xxxxxxx"}, timeout=5)
    assert r.status_code == 401 and r.json() == {"error": "wrong token", "field": "token"}
    assert "Set-Cookie" not in r.headers
    r = requests.post(guarded_web + "/api/login", data="not json", timeout=5)
    assert r.status_code == 400 and r.json()["error"]
    r = requests.post(guarded_web + "/api/login", json={"token": TOKEN}, timeout=5)
    assert r.status_code == 204 and not r.content
    cookie = r.headers["Set-Cookie"]
    attributes = {part.strip().split("=", 1)[0].lower(): part.strip() for part in cookie.split(";")}
    assert cookie.startswith(f"tc_session={SESSION};")
    assert "httponly" in attributes and attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/" and "max-age" not in attributes and "expires" not in attributes
    assert TOKEN not in cookie


def test_the_cookie_authenticates_rest_and_the_websocket(guarded_web):
    session = log_in(guarded_web)
    for path in ("/api/cameras", "/api/keys", "/metrics"):
        assert session.get(guarded_web + path, timeout=5).ok, path
    r = session.post(guarded_web + "/api/cameras", json={"cameraId": "auth-1", "url": "x.avi", "enabled": False},
                     timeout=5)
    assert r.status_code == 201, r.text
    # a forged or stale cookie is no credential
    assert requests.get(guarded_web + "/api/cameras", cookies={"tc_session": "0" * 64}, timeout=5).status_code == 401
    # websocket-client sends Origin: http://<the host it connects to>, as the page does
    assert ws_ack(guarded_web, cookie=f"tc_session={SESSION}")["data"]["clientId"]
    assert ws_refused(guarded_web, cookie="tc_session=" + "0" * 64).status_code == 401


def test_a_cross_origin_request_with_the_cookie_is_refused(guarded_web):
    port = guarded_web.rsplit(":", 1)[1]
    for origin in ("http://evil.example", f"http://127.0.0.1:{int(port) + 1}", "null"):
        # another page in the user's browser opening the WebSocket with the user's cookie: hijacking
        refused = ws_refused(guarded_web, cookie=f"tc_session={SESSION}", origin=origin)
        assert refused.status_code == 403, origin
        r = requests.post(guarded_web + "/api/cameras", data=json.dumps({"cameraId": "csrf-1", "url": "x.avi"}),
                          headers={"Origin": origin, "Content-Type": "text/plain"},
                          cookies={"tc_session": SESSION}, timeout=5)
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    assert "csrf-1" not in [c["cameraId"] for c in requests.get(guarded_web + "/api/cameras", headers=BEARER,
                                                                timeout=5).json()]
    # a non-browser client with the header is not a cross-origin browser request
    assert ws_ack(guarded_web, header=[f"Authorization: Bearer {TOKEN}"], origin="http://elsewhere.example")


def test_logout_clears_the_cookie(guarded_web):
    session = log_in(guarded_web)
    assert session.get(guarded_web + "/api/keys", timeout=5).ok
    r = session.post(guarded_web + "/api/logout", timeout=5)
    assert r.status_code == 204
    assert r.headers["Set-Cookie"].startswith("tc_session=;") and "Path=/" in r.headers["Set-Cookie"]
    assert "tc_session" not in session.cookies
    assert session.get(guarded_web + "/api/keys", timeout=5).status_code == 401


def test_without_a_token_the_server_binds_loopback_only(system_env, log_dir):
    proc, url = start_web({**system_env, "TC_WEB_HOST": "0.0.0.0", "TC_CAPTURE_IN_WEB": "false"}, log_dir,
                          "web-open")
    try:
        assert "binding 127.0.0.1 instead of 0.0.0.0" in proc.output()
        port = int(url.rsplit(":", 1)[1])
        listening = wait_for(lambda: [c.laddr.ip for c in psutil.Process(proc.process.pid).net_connections("tcp")
                                      if c.status == psutil.CONN_LISTEN and c.laddr.port == port], 10, "listen")
        assert listening == ["127.0.0.1"]
        # nothing to log in to: the API is open (to this machine)
        r = requests.post(url + "/api/login", json={"token": "anything"}, timeout=5)
        assert r.status_code == 204 and "Set-Cookie" not in r.headers
        assert requests.get(url + "/api/cameras", timeout=5).ok
    finally:
        proc.stop()
