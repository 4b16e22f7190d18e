"""Token auth on REST, /metrics and the WebSocket; loopback only without a token."""

from __future__ import annotations

import psutil
import pytest
import requests
import websocket

from .conftest import WsClient, start_web, wait_for

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded_web(system_env, log_dir):
    proc, url = start_web({**system_env, "TC_API_TOKEN": TOKEN, "TC_CAPTURE_IN_WEB": "false"}, log_dir,
                          "web-token")
    try:
        yield url
    finally:
        proc.stop()


@pytest.mark.parametrize("path", ["/api/cameras", "/api/keys", "/api/openapi.json", "/metrics"])
def test_routes_need_the_token(guarded_web, path):
    r = requests.get(guarded_web + path, timeout=5)
    assert r.status_code == 401 and r.json()["field"] == "token" and "Bearer" in r.json()["error"]
    assert requests.get(guarded_web + path, headers={"Authorization": "Bearer wrong-token-xxxxxxx"},
                        timeout=5).status_code == 401
    assert requests.get(guarded_web + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).ok


def test_health_and_the_page_stay_open(guarded_web):
    assert requests.get(guarded_web + "/api/health", timeout=5).ok
    assert requests.get(guarded_web + "/", timeout=5).ok


def test_websocket_needs_the_token(guarded_web):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(guarded_web.replace("http", "ws") + "/ws", timeout=5)
    assert refused.value.status_code == 401
    client = WsClient(guarded_web + "/ws?token=" + TOKEN, path="")
    try:
        client.wait(lambda m: m["type"] == "connection_ack", 10, "connection_ack with the token")
    finally:
        client.close()


def test_without_a_token_the_server_binds_loopback_only(system_env, log_dir):
    proc, url = start_web({**system_env, "TC_WEB_HOST": "0.0.0.0", "TC_CAPTURE_IN_WEB": "false"}, log_dir,
                          "web-open")
    try:
        assert "binding 127.0.0.1 instead of 0.0.0.0" in proc.output()
        port = int(url.rsplit(":", 1)[1])
        listening = wait_for(lambda: [c.laddr.ip for c in psutil.Process(proc.process.pid).net_connections("tcp")
                                      if c.status == psutil.CONN_LISTEN and c.laddr.port == port], 10, "listen")
        assert listening == ["127.0.0.1"]
    finally:
        proc.stop()
