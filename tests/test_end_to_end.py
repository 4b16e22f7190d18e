"""The whole path on real parts: Redis, the fake provider, a Celery worker process, the web tier, a WebSocket."""

from __future__ import annotations

import json
import time

import requests

from traffic_celery import names
from traffic_celery.llm.schema import GroupResult

from .conftest import scrape, total, wait_for

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
    wait_for(lambda: stats() == stats(), 10, "the counters to settle", interval=0.5)
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
    children (tasks, LLM, callbacks): after one camera's run each counter moved by what that run did."""
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

    def callbacks_done() -> bool:
        nonlocal after
        if not settled():
            return False
        after = scrape(web)
        return delta("tc_tasks_succeeded_total", task="workers.results.on_assessment") == made

    after: list = []
    wait_for(callbacks_done, 30, lambda: f"{made} callbacks counted, got "
             f"{delta('tc_tasks_succeeded_total', task='workers.results.on_assessment')}")

    # capture, in the web process
    analysed = delta("tc_frames_analysed_total", camera="metered")
    assert analysed >= len(frames)
    assert delta("tc_detection_duration_seconds_count") == delta("tc_frames_analysed_total") >= analysed
    assert delta("tc_objects_detected_total", **{"class": "person"}) >= sum(
        1 for f in frames for o in f["detectedObjects"] if o["class"] == "person") > 0
    assert delta("tc_traffic_groups_total", camera="metered") >= sum(len(f["trafficGroups"]) for f in frames) > 0
    # tasks, published by the web process (assessments) and the worker (retries, callbacks), run by the worker
    assess, callback = "workers.assess.assess_group", "workers.results.on_assessment"
    retried = delta("tc_tasks_retried_total", task=assess)
    assert delta("tc_tasks_enqueued_total", task=assess) == made + retried
    assert delta("tc_tasks_started_total", task=assess) == made + retried
    assert delta("tc_tasks_succeeded_total", task=assess) == made
    assert delta("tc_tasks_enqueued_total", task=callback, queue="results") == made
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
