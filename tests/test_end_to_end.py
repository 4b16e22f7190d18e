"""The whole path on real parts: Redis, the fake provider, a Celery worker process, the web tier, a WebSocket."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import requests

from traffic_celery import names, store
from traffic_celery.llm.schema import GroupResult

from .conftest import ASSETS_BUS, TEST_KEYS, Proc, scrape, total, wait_for


def unchanged_for(read: Callable[[], Any], quiet: float) -> Callable[[], bool]:
    """A condition for `wait_for`: true once every reading taken over at least `quiet` seconds was the same (the
    counters stopped moving); any change starts the quiet period again."""
    first: dict[str, Any] = {}

    def check() -> bool:
        value, now = read(), time.monotonic()
        if "value" not in first or value != first["value"]:
            first.update(value=value, at=now)
            return False
        return now - first["at"] >= quiet

    return check


RISK_FIELDS = {"cameraId", "groupId", "taskId", "riskLevel", "riskTypes", "description", "confidence",
               "dangerObjectIds", "llmLatency", "llmModel", "apiKeyId"}


def test_sample_video_yields_detections_and_assessments(web, ws_factory, sample_video, redis_client, provider):
    client = ws_factory(web)
    client.send("start_stream", {"cameraId": 101, "rtspUrl": str(sample_video)})
    try:
        status = client.wait(lambda m: m["type"] == "camera_status", 60, "camera_status")
        assert status["data"] == {"cameraId": "101", "status": 1, "state": "online",
                                  "message": f"streaming {sample_video}"}

        # Real detections: the sample video shows pedestrians and a parked car.
        classes: set[str] = set()
        detection = None
        while not {"person", "car"} <= classes:
            detection = client.wait(lambda m: m["type"] == "detection_result", 60, "detection_result")
            classes |= {o["class"] for o in detection["data"]["detectedObjects"]}
        data = detection["data"]
        assert (data["imageWidth"], data["imageHeight"]) == (768, 576)
        assert data["frame"], "the frame is sent for the page to draw"
        for obj in data["detectedObjects"]:
            x1, y1, x2, y2 = obj["bbox"]
            assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576
            assert 0.3 <= obj["confidence"] <= 1

        assessment = client.wait(lambda m: m["type"] == "risk_assessment", 60, "risk_assessment")["data"]
        assert RISK_FIELDS <= set(assessment)
        assert assessment["cameraId"] == "101"
        assert assessment["riskLevel"] in ("none", "low", "medium", "high")
        assert assessment["apiKeyId"] in ("test-a", "test-b")
        assert assessment["llmLatency"] > 0
        GroupResult(groupIndex=assessment["groupIndex"], riskLevel=assessment["riskLevel"],
                    confidence=assessment["confidence"], riskTypes=assessment["riskTypes"],
                    description=assessment["description"], dangerObjectCount=len(assessment["dangerObjectIds"]),
                    triggerObjectIds=assessment["dangerObjectIds"])
        # The callback stored it as the camera's latest, and the provider really answered the call.
        latest = json.loads(redis_client.get(names.latest_key("101")))
        assert latest["taskId"]
        assert provider["stats"]()["ok"] >= 1
    finally:
        client.send("stop_stream", {"cameraId": 101})
    stopped = client.wait(lambda m: m["type"] == "stream_stopped", 20, "stream_stopped")
    assert stopped["data"]["cameraId"] == "101"


def test_bad_camera_url_gives_clear_status_and_error(web, ws_factory, sample_video):
    client = ws_factory(web)
    missing = sample_video.parent / "no-such-video.avi"  # in the media folder, so it is tried (and fails)
    client.send("start_stream", {"cameraId": "cam-bad", "rtspUrl": str(missing)})
    status = client.wait(lambda m: m["type"] == "camera_status", 30, "camera_status")
    assert status["data"]["status"] == 0
    assert "does not exist" in status["data"]["message"]
    error = client.wait(lambda m: m["type"] == "error", 10, "error")
    assert error["data"]["code"] == "camera_failed" and error["data"]["cameraId"] == "cam-bad"
    client.send("ping")
    client.wait(lambda m: m["type"] == "pong", 10, "pong after a failed camera")


REFUSED = [
    ("/etc/passwd", "outside the media folder"),
    ("file:///etc/hostname", "outside the media folder"),
    ("../../../../etc/passwd", "outside the media folder"),
    ("ftp://example.com/cam", "unsupported camera URL scheme"),
    ("data:text/plain,hello", "unsupported camera URL scheme"),
    ("concat:/etc/passwd|/etc/hostname", "unsupported camera URL scheme"),
    ("rtsp:///no-host", "has no host"),
    ("9999", "out of range"),
    ("cam\n2.avi", "control characters"),
]


def test_camera_urls_outside_the_media_folder_or_of_other_schemes_are_refused(web, ws_factory, redis_client):
    """No reading arbitrary files (or FFmpeg protocols) through the camera API: each refusal names the reason
    and what is accepted, on the WebSocket and on REST, and nothing is registered."""
    client = ws_factory(web)
    for url, reason in REFUSED:
        client.send("start_stream", {"cameraId": "probe-me", "rtspUrl": url})
        error = client.wait(lambda m: m["type"] == "error", 10, f"the refusal of {url!r}")["data"]
        assert error["code"] == "invalid_url" and reason in error["message"], (url, error)
        assert "TC_MEDIA_DIR" in error["message"] or reason in ("control characters",)
        r = requests.post(web + "/api/cameras", json={"cameraId": "probe-me", "url": url}, timeout=5)
        assert r.status_code == 400 and r.json()["field"] == "url" and reason in r.json()["error"], (url, r.text)
    assert not redis_client.hexists(names.CAMERAS, "probe-me")
    # a path relative to the media folder is accepted and stored resolved
    r = requests.post(web + "/api/cameras", json={"cameraId": "rel", "url": "vtest.avi", "enabled": False},
                      timeout=5)
    assert r.status_code == 201 and r.json()["url"].endswith("/.media/vtest.avi"), r.text
    assert requests.patch(web + "/api/cameras/rel", json={"url": "/etc/passwd"}, timeout=5).status_code == 400
    client.send("ping")
    client.wait(lambda m: m["type"] == "pong", 10, "pong after the refusals")


def test_llm_calls_made_and_saved_are_counted_and_each_call_gives_one_assessment(web, ws_factory, sample_video):
    def stats():
        return requests.get(web + "/api/assessments/stats", timeout=5).json()

    def metric(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    before = stats()
    client = ws_factory(web)
    client.send("start_stream", {"cameraId": "counted", "rtspUrl": str(sample_video)})
    frames = [client.wait(lambda m: m["type"] == "detection_result", 60, "frames") for _ in range(15)]
    client.send("stop_stream", {"cameraId": "counted"})
    client.wait(lambda m: m["type"] == "stream_stopped", 20, "stream_stopped")
    assert any(f["data"]["trafficGroups"] for f in frames)
    wait_for(unchanged_for(stats, 1.0), 20, "the counters to stay the same for 1 s", interval=0.25)
    after = stats()
    made, saved = after["callsTotal"] - before["callsTotal"], after["saved"] - before["saved"]
    assert made >= 1 and after["calls"]["appeared"] > before["calls"]["appeared"]
    assert saved > made, "a steady scene needs far fewer calls than one per group per frame"

    def all_assessed() -> bool:
        while client.next(0.2) is not None:
            pass
        task_ids = {m["data"]["taskId"] for m in client.seen  # every message so far, waited for or not
                    if m["type"] == "risk_assessment" and m["data"]["cameraId"] == "counted"}
        return len(task_ids) == made

    wait_for(all_assessed, 30, f"{made} assessments, one per call counted")
    text = requests.get(web + "/metrics", timeout=5).text
    assert metric(text, "tc_assessment_calls_total") == after["callsTotal"]
    assert metric(text, "tc_assessment_calls_saved_total") == after["saved"]


TASK_COUNTERS = ("tc_frames_analysed_total", "tc_detection_duration_seconds_count", "tc_tasks_enqueued_total", "tc_tasks_started_total", "tc_tasks_succeeded_total",
                 "tc_tasks_failed_total", "tc_tasks_retried_total")


def test_metrics_of_every_process_move_by_what_a_run_caused(web, ws_factory, sample_video):
    """The web tier's /metrics sums the web process (capture loops, WebSocket) and the worker's prefork
    children (tasks, LLM, stored assessments): after one camera's run each counter moved by what that run did;
    no callback task runs (the LLM worker stores the assessment itself)."""
    def work() -> list[float]:
        samples = scrape(web)
        return [total(samples, name) for name in TASK_COUNTERS]

    def settled() -> bool:
        first = work()
        time.sleep(0.5)  # two scrapes half a second apart: nothing moved in between
        return first == work()

    wait_for(settled, 20, "earlier tests' loops and tasks to finish")
    before, stats_before = scrape(web), requests.get(web + "/api/assessments/stats", timeout=5).json()
    client = ws_factory(web)
    assert total(scrape(web), "tc_websocket_clients") >= 1
    client.send("start_stream", {"cameraId": "metered", "rtspUrl": str(sample_video)})
    frames = [client.wait(lambda m: m["type"] == "detection_result", 60, "frames")["data"] for _ in range(12)]
    client.send("stop_stream", {"cameraId": "metered"})
    client.wait(lambda m: m["type"] == "stream_stopped", 20, "stream_stopped")
    made = requests.get(web + "/api/assessments/stats", timeout=5).json()["callsTotal"] - stats_before["callsTotal"]
    assert made >= 1

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    def assessments_done() -> bool:
        nonlocal after
        if not settled():
            return False
        after = scrape(web)
        return delta("tc_tasks_succeeded_total", task="workers.assess.assess_group") == made

    after: list = []
    wait_for(assessments_done, 30, lambda: f"{made} assessments counted, got "
             f"{delta('tc_tasks_succeeded_total', task='workers.assess.assess_group')}")

    # capture, in the web process
    analysed = delta("tc_frames_analysed_total", camera="metered")
    assert analysed >= len(frames)
    assert delta("tc_detection_duration_seconds_count") == delta("tc_frames_analysed_total") >= analysed
    assert delta("tc_objects_detected_total", **{"class": "person"}) >= sum(
        1 for f in frames for o in f["detectedObjects"] if o["class"] == "person") > 0
    assert delta("tc_traffic_groups_total", camera="metered") >= sum(len(f["trafficGroups"]) for f in frames) > 0
    # tasks, published by the web process (assessments) and the worker (retries), run by the worker
    assess, callback = "workers.assess.assess_group", "workers.results.on_assessment"
    retried = delta("tc_tasks_retried_total", task=assess)
    assert delta("tc_tasks_enqueued_total", task=assess) == made + retried
    assert delta("tc_tasks_started_total", task=assess) == made + retried
    assert delta("tc_tasks_succeeded_total", task=assess) == made
    assert delta("tc_tasks_enqueued_total", task=callback) == 0  # stored by assess_group itself
    assert delta("tc_tasks_failed_total") == 0
    assert {ls["queue"] for n, ls, _ in after if n == "tc_tasks_succeeded_total" and ls["task"] == assess} <= {
        "llm.test-a", "llm.test-b"}
    # the LLM, per key and model, in the worker's children; and the same calls in the keys' shared state
    assert delta("tc_llm_request_duration_seconds_count", model="qwen-vl-plus") == made
    assert delta("tc_llm_tokens_total", kind="prompt") > 600 * made - 1
    assert delta("tc_llm_key_calls_total") == made + retried
    # results: one per call, by risk level as the clients saw them
    while client.next(0.2) is not None:
        pass
    seen = [m["data"]["riskLevel"] for m in client.seen
            if m["type"] == "risk_assessment" and m["data"]["cameraId"] == "metered"]
    assert len(seen) == made
    for level in ("none", "low", "medium", "high"):
        assert delta("tc_assessments_total", risk_level=level) == seen.count(level)
    assert delta("tc_assessment_latency_seconds_count") == made


def test_a_no_danger_answer_costs_one_call_and_gives_one_assessment(base_env, log_dir, isolated_redis):
    """A model answering `{"hasDangerousDriving": false, "maxRiskLevel": "none", "results": []}`: one call, one
    risk_assessment at level none, nothing retried or dead-lettered."""
    from traffic_celery.broker.config import producer_app
    from traffic_celery.fake_provider.server import ProviderServer, ProviderState
    from traffic_celery.llm.dispatch import Dispatcher
    from traffic_celery.llm.keys import KeyPool
    from traffic_celery.llm.router import build_router
    from traffic_celery.settings import Settings

    keys = {secret: (key_id, 50.0) for key_id, secret in (pair.split("=", 1) for pair in TEST_KEYS.split(","))}
    provider = ProviderServer(("127.0.0.1", 0), ProviderState(keys, latency=0.05, bare_none=True))
    threading.Thread(target=provider.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    env = isolated_redis.env({**base_env, "TC_LLM_BASE_URL": provider.url, "TC_LLM_MAX_RETRIES": "1"})
    worker = Proc("worker-no-danger", [sys.executable, "-m", "workers", "--hostname", "no-danger@%h"], env, log_dir)
    events = isolated_redis.client.pubsub(ignore_subscribe_messages=True)
    try:
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the worker to be ready")
        events.subscribe(names.events_channel("calm"))
        settings = Settings(redis_url=isolated_redis.url, llm_api_keys=TEST_KEYS, llm_base_url=provider.url)
        dispatch = Dispatcher(producer_app(settings),
                              build_router(settings, isolated_redis.client, KeyPool.from_settings(settings)))
        jpeg = cv2.imencode(".jpg", cv2.imread(str(ASSETS_BUS))[200:700, 0:400])[1].tobytes()
        task_id = dispatch({
            "cameraId": "calm", "groupId": "g1", "groupIndex": 3,
            "imageKey": store.store_image(isolated_redis.client, jpeg, 600),
            # two pedestrians apart, no vehicle: the provider's verdict is "none", sent as the bare answer
            "features": {"objectCount": 2, "classCounts": {"person": 2}, "minGap": 0.5,
                         "pedestrianVehicleGap": None},
            "memberTrackIds": [1, 2], "frameTimestamp": time.time(), "reason": "appeared"})
        seen: list[dict[str, Any]] = []

        def outcome() -> bool:
            while (msg := events.get_message(timeout=0.1)) is not None:
                seen.append(json.loads(msg["data"]))
            return any(e["type"] in ("risk_assessment", "error") for e in seen)

        wait_for(outcome, 60, lambda: f"an assessment or an error for task {task_id}; saw {seen}")
        assert [e["type"] for e in seen] == ["risk_assessment"], seen
        assessment = seen[0]["data"]
        assert assessment["taskId"] == task_id and assessment["groupIndex"] == 3
        assert (assessment["riskLevel"], assessment["riskTypes"], assessment["dangerObjectIds"]) == ("none", [], [])
        assert assessment["description"] == "no danger seen" and assessment["confidence"] == 1.0
        assert provider.state.stats()["requests"] == 1  # one call, no retry
        assert isolated_redis.client.xlen(names.DLQ) == 0  # nothing dead-lettered
    finally:
        events.close()
        worker.stop()
        provider.shutdown()
        provider.server_close()
