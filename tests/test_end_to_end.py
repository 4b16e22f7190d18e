"""The whole path on real parts: Redis, the fake provider, a Celery worker process, the web tier, a WebSocket."""

from __future__ import annotations

import json

import requests

from traffic_celery import names
from traffic_celery.assessment import GroupResult

from .conftest import wait_for

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


def test_bad_camera_url_gives_clear_status_and_error(web, ws_factory, tmp_path):
    client = ws_factory(web)
    missing = tmp_path / "no-such-video.avi"
    client.send("start_stream", {"cameraId": "cam-bad", "rtspUrl": str(missing)})
    status = client.wait(lambda m: m["type"] == "camera_status", 30, "camera_status")
    assert status["data"]["status"] == 0
    assert "does not exist" in status["data"]["message"]
    error = client.wait(lambda m: m["type"] == "error", 10, "error")
    assert error["data"]["code"] == "camera_failed" and error["data"]["cameraId"] == "cam-bad"
    client.send("ping")
    client.wait(lambda m: m["type"] == "pong", 10, "pong after a failed camera")


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
