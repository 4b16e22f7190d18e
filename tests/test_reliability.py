"""Faults of the infrastructure, on real processes: Redis restarting under load, and a whole Celery worker killed
(main process and children) in the middle of its calls.

(A pool child killed mid-call, provider faults and camera faults are in test_key_pool.py, test_sources.py and
test_cameras.py.)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator

import cv2
import psutil
import pytest
import redis
import requests

from traffic_celery import names, store
from traffic_celery.broker.config import producer_app
from traffic_celery.embedded_redis import EmbeddedRedis, free_port
from traffic_celery.llm.dispatch import Dispatcher
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.router import build_router
from traffic_celery.settings import Settings

from .conftest import ASSETS_BUS, Proc, start_web, wait_for


def bus_group(r: redis.Redis, jpeg: bytes, camera: str, group: str) -> dict:
    """A recorded traffic group (a bus and a person close together), as the capture loop hands it to dispatch."""
    return {"cameraId": camera, "groupId": group, "groupIndex": 0, "reason": "appeared", "imageKey": store.store_image(r, jpeg, 600),
            "features": {"objectCount": 2, "classCounts": {"bus": 1, "person": 1}, "minGap": 0.1,
                         "pedestrianVehicleGap": 0.1},
            "memberTrackIds": [1, 2], "frameTimestamp": time.time()}


@pytest.fixture()
def own_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(persistent=True).start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restart_under_load_resumes_and_loses_no_assessment(system_env, own_redis, log_dir, ws_factory,
                                                                  sample_video):
    env = {**system_env, "TC_REDIS_URL": own_redis.url, "TC_ASSESS_MIN_INTERVAL": "0.5",
           "TC_REASSESS_INTERVAL": "2"}
    worker = Proc("rr-worker", [sys.executable, "-m", "workers", "--hostname", "rr-worker@%h"], env, log_dir)
    web_proc = None
    try:
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the worker")
        web_proc, url = start_web(env, log_dir, "rr-web")
        client = ws_factory(url)
        client.send("start_stream", {"cameraId": "rr", "rtspUrl": str(sample_video)})
        client.wait(lambda m: m["type"] == "risk_assessment", 90, "an assessment before the restart")

        own_redis.restart(down_for=1.0)
        back = time.time()
        frame = client.wait(lambda m: m["type"] == "detection_result" and m["data"]["timestamp"] > back, 30,
                            "frames again after the restart")
        after = client.wait(lambda m: m["type"] == "risk_assessment" and m["data"]["frameTimestamp"] > back, 60,
                            "an assessment of a frame taken after the restart")
        print(f"first frame {frame['data']['timestamp'] - back:.1f}s, first assessment "
              f"{after['data']['assessedAt'] - back:.1f}s after Redis answered again")
        client.send("stop_stream", {"cameraId": "rr"})
        client.wait(lambda m: m["type"] == "stream_stopped", 20, "stream_stopped")

        # every assessment stored after the restart reached the client (pub/sub or the relay's catch-up)
        r = redis.Redis.from_url(own_redis.url, socket_timeout=5)

        def stored_after() -> set[str]:
            return {json.loads(f[b"assessment"])["taskId"] for _id, f in
                    r.xrange(names.alerts_key("rr"), min=str(int(back * 1000)), max="+")}

        def all_seen() -> bool:
            while client.next(0.2) is not None:
                pass
            seen = {m["data"]["taskId"] for m in client.seen if m["type"] == "risk_assessment"}
            return bool(stored_after()) and stored_after() <= seen

        wait_for(all_seen, 30, "every assessment stored after the restart at the client")
        seen = [m["data"]["taskId"] for m in client.seen if m["type"] == "risk_assessment"]
        assert len(seen) == len(set(seen)), "an assessment reached the client twice"
        assert worker.alive() and web_proc.alive()
        health = wait_for(lambda: (lambda b: b if b["status"] == "ok" else None)(
            requests.get(url + "/api/health", timeout=5).json()), 20, "health ok after the restart")
        assert health["eventRelay"] and health["workers"]["ok"]
    finally:
        for proc in (web_proc, worker):
            if proc is not None:
                proc.stop()


def test_worker_survives_redis_vanishing_while_it_waits_with_a_task_in_flight(system_env, own_redis, log_dir):
    """Redis goes away while a worker has one call in flight and waits in BRPOP for the next task. Stock kombu
    closed that channel twice and the second close crashed the whole worker ("Unrecoverable error", see
    traffic_celery/broker/redis_transport.py); which socket notices first is up to epoll, so each round hits it about half
    the time and six rounds all but surely do. The worker must stay up, reconnect each time, and every task
    must end with an assessment (those whose acknowledgement was lost come back after the visibility
    timeout)."""
    port = free_port()
    provider = Proc("brpop-provider", [sys.executable, "-m", "traffic_celery.fake_provider", "--port", str(port),
                                       "--latency", "2"], system_env, log_dir)
    env = {**system_env, "TC_REDIS_URL": own_redis.url, "TC_VISIBILITY_TIMEOUT": "10",
           "TC_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    worker = Proc("brpop-worker", [sys.executable, "-m", "workers", "--hostname", "brpop@%h", "--concurrency",
                                   "2"], env, log_dir)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, 30, "the provider")
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the worker")
        settings = Settings(redis_url=own_redis.url, llm_api_keys=env["TC_LLM_API_KEYS"])
        r = redis.Redis.from_url(own_redis.url, socket_timeout=5)
        dispatch = Dispatcher(producer_app(settings), build_router(settings, r, KeyPool.from_settings(settings)))
        jpeg = cv2.imencode(".jpg", cv2.imread(str(ASSETS_BUS))[200:700, 0:400])[1].tobytes()
        requests_seen = lambda: requests.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()["requests"]  # noqa: E731
        ids = []
        for round_ in range(6):
            before, connects = requests_seen(), worker.output().count("Connected to")
            ids.append(wait_for(lambda: dispatch(bus_group(r, jpeg, "brpop", f"g{round_}")), 20,
                                "the task enqueued"))
            wait_for(lambda: requests_seen() > before, 20, "the call in flight")
            own_redis.restart(down_for=0.5)
            wait_for(lambda: not worker.alive() or worker.output().count("Connected to") > connects, 30,
                     "the worker to reconnect")
            assert worker.alive(), f"the worker died in round {round_}:\n{worker.output()[-3000:]}"
        assert "Unrecoverable" not in worker.output()

        def assessed() -> set[str]:
            return {json.loads(f[b"assessment"])["taskId"] for _id, f in r.xrange(names.alerts_key("brpop"))}

        wait_for(lambda: set(ids) <= assessed(), 60, lambda: f"assessments of {sorted(set(ids) - assessed())}")
    finally:
        worker.stop()
        provider.stop()


def test_whole_worker_killed_mid_call_its_tasks_come_back_once(system_env, own_redis, log_dir, ws_factory):
    """SIGKILL to a worker's main process and children while its calls are in flight: nothing acknowledged
    them, so the broker gives them back after the visibility timeout, another worker runs them, and the camera's
    client sees each assessment exactly once."""
    port = free_port()
    provider = Proc("slow-provider", [sys.executable, "-m", "traffic_celery.fake_provider", "--port", str(port),
                                      "--latency", "3"], system_env, log_dir)
    env = {**system_env, "TC_REDIS_URL": own_redis.url, "TC_VISIBILITY_TIMEOUT": "10",
           "TC_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1", "TC_CAPTURE_IN_WEB": "false"}
    first = Proc("doomed-worker", [sys.executable, "-m", "workers", "--hostname", "doomed@%h", "--concurrency",
                                   "2"], env, log_dir)
    second = web_proc = None
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, 30, "the provider")
        wait_for(lambda: first.alive() and "ready." in first.output(), 60, "the first worker")
        web_proc, url = start_web(env, log_dir, "kill-web")
        client = ws_factory(url)
        client.send("subscribe", {"cameraId": "killed"})
        client.wait(lambda m: m["type"] == "subscribed", 10, "subscribed")
        settings = Settings(redis_url=own_redis.url, llm_api_keys=env["TC_LLM_API_KEYS"])
        r = redis.Redis.from_url(own_redis.url, socket_timeout=5)
        dispatch = Dispatcher(producer_app(settings), build_router(settings, r, KeyPool.from_settings(settings)))
        jpeg = cv2.imencode(".jpg", cv2.imread(str(ASSETS_BUS))[200:700, 0:400])[1].tobytes()
        ids = [dispatch(bus_group(r, jpeg, "killed", f"g{i}")) for i in range(4)]
        requests_seen = lambda: requests.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()["requests"]  # noqa: E731
        wait_for(lambda: requests_seen() >= 2, 20, "both pool processes in the middle of a call")
        for child in psutil.Process(first.process.pid).children(recursive=True):
            os.kill(child.pid, signal.SIGKILL)
        os.kill(first.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        second = Proc("rescue-worker", [sys.executable, "-m", "workers", "--hostname", "rescue@%h"], env, log_dir)

        def every_task_seen() -> bool:
            while client.next(0.2) is not None:
                pass
            return {m["data"]["taskId"] for m in client.seen if m["type"] == "risk_assessment"} == set(ids)

        wait_for(every_task_seen, 90, "every task's assessment, the killed worker's included")
        print(f"all {len(ids)} assessments {time.monotonic() - killed_at:.1f}s after the kill")
        seen = [m["data"]["taskId"] for m in client.seen if m["type"] == "risk_assessment"]
        assert sorted(seen) == sorted(ids), "each assessment exactly once"
        assert r.xlen(names.alerts_key("killed")) == len(ids)
    finally:
        for proc in (web_proc, second, first, provider):
            if proc is not None:
                proc.stop()
