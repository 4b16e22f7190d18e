"""The web tier under gunicorn, several worker processes behind one address: every client gets every event."""

from __future__ import annotations

import sys

import requests

from traffic_celery.embedded_redis import free_port

from .conftest import Proc, wait_for


def test_gunicorn_workers_all_deliver_frames_and_assessments(system_env, log_dir, ws_factory, sample_video,
                                                             worker):
    port = free_port()
    env = {**system_env, "TC_WEB_PORT": str(port), "TC_WEB_WORKERS": "3", "TC_WEB_THREADS": "16"}
    proc = Proc("gunicorn", [sys.executable, "-m", "gunicorn", "-c", "web/gunicorn_conf.py", "web.wsgi:app"], env,
                log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.alive() and requests.get(url + "/api/health", timeout=2).ok, 60, "gunicorn")
        wait_for(lambda: proc.output().count("Booting worker") == 3, 30, "three gunicorn workers")
        clients = [ws_factory(url) for _ in range(6)]
        for client in clients:
            client.send("subscribe", {"cameraId": "g1"})
        requests.post(url + "/api/cameras", json={"cameraId": "g1", "url": str(sample_video)}, timeout=5)

        def assessed(client) -> set:
            while client.next(0.1) is not None:
                pass
            return {m["data"]["taskId"] for m in client.seen
                    if m["type"] == "risk_assessment" and m["data"]["cameraId"] == "g1"}

        common = wait_for(lambda: set.intersection(*(assessed(c) for c in clients)), 90,
                          "a risk_assessment that every client got")
        assert common
        for client in clients:
            assert any(m["type"] == "detection_result" for m in client.seen)
        pids = {c.seen[0]["data"].get("process") for c in clients}
        print(f"6 clients on {len(pids)} gunicorn worker(s)")
        requests.delete(url + "/api/cameras/g1", timeout=5)
    finally:
        assert proc.stop() == 0  # with the WebSockets still open: they are closed, not waited for
