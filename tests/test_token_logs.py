"""Regression: TC_API_TOKEN never reaches a log line, whatever a client sends (a token in a URL was written in
full to the web tier's request log), under `python -m web` and under gunicorn with its access log on."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import requests
import websocket

from traffic_celery.embedded_redis import free_port
from traffic_celery.logs import SecretFilter

from .conftest import TEST_API_TOKENS, Proc, start_web, wait_for

TOKEN = TEST_API_TOKENS[0]


def leaks(log_dir: Path) -> list[str]:
    """Every log file of the session's processes that holds the token."""
    return [path.name for path in sorted(log_dir.glob("*.log")) if TOKEN in path.read_text(errors="replace")]


def exercise(url: str) -> None:
    """What clients do with a token: put it in URLs (old bookmarks, old scripts), and the proper ways."""
    for path in (f"/api/cameras?token={TOKEN}", f"/?token={TOKEN}", f"/api/keys?access_token={TOKEN}",
                 f"/metrics?token={TOKEN}&x=1"):
        requests.get(url + path, timeout=5)
    try:  # refused now (401); the old code accepted it
        websocket.create_connection(url.replace("http://", "ws://") + f"/ws?token={TOKEN}", timeout=5).close()
    except websocket.WebSocketException:
        pass
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(url + "/api/cameras", headers=bearer, timeout=5).ok
    assert requests.get(url + "/metrics", headers=bearer, timeout=5).ok
    ws = websocket.create_connection(url.replace("http://", "ws://") + "/ws", timeout=5,
                                     header=[f"Authorization: Bearer {TOKEN}"])
    try:
        assert json.loads(ws.recv())["type"] == "connection_ack"
    finally:
        ws.close()
    session = requests.Session()
    session.post(url + "/api/login", json={"token": TOKEN}, timeout=5)
    session.post(url + "/api/login", json={"token": TOKEN + "-wrong"}, timeout=5)
    session.get(url + "/api/keys", timeout=5)


def test_the_token_is_in_no_log_of_the_web_tier(system_env, log_dir):
    proc, url = start_web({**system_env, "TC_API_TOKEN": TOKEN, "TC_CAPTURE_IN_WEB": "false"}, log_dir,
                          "web-token-logs")
    try:
        exercise(url)
        # the request log is written after the response: wait for the last request's line
        wait_for(lambda: 'GET /api/keys HTTP/1.1' in proc.output(), 10, "the request log line of /api/keys")
    finally:
        proc.stop()
    assert not leaks(log_dir), f"TC_API_TOKEN in the logs of {log_dir}: {leaks(log_dir)}"
    # not because nothing was logged: werkzeug's request lines went through the root handler's filter, masked
    # (werkzeug colours a line by status code)
    lines = [line for line in proc.output().splitlines() if " web INFO werkzeug: " in line]
    assert any("GET /api/cameras?token=*** HTTP/1.1" in line and line.endswith(" 401 -") for line in lines), lines
    assert any("GET /?token=*** HTTP/1.1" in line and line.endswith(" 200 -") for line in lines), lines


def test_the_token_is_in_no_gunicorn_access_log(system_env, log_dir):
    port = free_port()
    env = {**system_env, "TC_API_TOKEN": TOKEN, "TC_CAPTURE_IN_WEB": "false", "TC_WEB_PORT": str(port),
           "TC_WEB_WORKERS": "1", "TC_WEB_THREADS": "8"}
    proc = Proc("gunicorn-token-logs", [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn_conf.py",
                                        "--access-logfile", "-", "web.wsgi:app"], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.alive() and requests.get(url + "/api/health", timeout=2).ok, 60, "gunicorn")
        exercise(url)
        wait_for(lambda: 'GET /api/keys HTTP/1.1' in proc.output(), 10, "the access log line of /api/keys")
    finally:
        proc.stop()
    assert not leaks(log_dir), f"TC_API_TOKEN in the logs of {log_dir}: {leaks(log_dir)}"
    assert '"GET /api/cameras?token=*** HTTP/1.1" 401' in proc.output(), proc.output()[-3000:]


def test_the_filter_masks_the_token_and_token_parameters():
    secret_filter = SecretFilter(["sk-secret-abcdef123", TOKEN])

    def masked(message: str, exc_info=None) -> str:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (message,), exc_info)
        secret_filter.filter(record)
        return logging.Formatter().format(record)

    assert masked(f"header Bearer {TOKEN}") == "header Bearer tes…cdef"
    assert masked('"GET /ws?a=1&token=abc%2Fdef&b=2 HTTP/1.1" 401') == '"GET /ws?a=1&token=***&b=2 HTTP/1.1" 401'
    assert masked("/x?access_token=zzz-yyy") == "/x?access_token=***"
    assert masked("a token: kept, no value") == "a token: kept, no value"
    try:
        raise ValueError(f"bad request /api?token={TOKEN[::-1]}")
    except ValueError:
        text = masked("failed", sys.exc_info())
    assert "token=***" in text and TOKEN[::-1] not in text
