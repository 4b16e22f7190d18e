"""Flower behind basic auth, started the way the Procfile starts it."""

from __future__ import annotations

import sys

import psutil
import requests

from traffic_celery.embedded_redis import free_port

from .conftest import Proc, wait_for

SECRET = "flower-secret-4711"


def test_flower_answers_with_auth_and_refuses_without(base_env, log_dir):
    port = free_port()
    env = {**base_env, "TC_FLOWER_PORT": str(port), "TC_FLOWER_BASIC_AUTH": f"ops:{SECRET}"}
    proc = Proc("flower", [sys.executable, "-m", "workers.flower"], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/api/workers", timeout=2).status_code == 401, 60, "Flower up")
        assert requests.get(url + "/api/workers", auth=("ops", "wrong"), timeout=5).status_code == 401
        r = requests.get(url + "/api/workers", auth=("ops", SECRET), timeout=10)
        assert r.status_code == 200 and isinstance(r.json(), dict)
        assert SECRET not in " ".join(psutil.Process(proc.process.pid).cmdline())  # not visible in ps
    finally:
        proc.stop()
