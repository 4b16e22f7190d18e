"""The REST API on the real web tier: every camera route, each bad input, alert history and the OpenAPI text."""

from __future__ import annotations

import pytest
import requests

from .conftest import wait_for


def api(web: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, web + path, timeout=10, **kwargs)


def state_of(web: str, camera_id: str) -> str:
    return api(web, "GET", f"/api/cameras/{camera_id}").json()["state"]


def test_camera_lifecycle(web, sample_video):
    r = api(web, "POST", "/api/cameras", json={"cameraId": "rest-1", "url": str(sample_video)})
    assert r.status_code == 201 and r.json()["cameraId"] == "rest-1" and r.json()["enabled"] is True
    assert api(web, "POST", "/api/cameras", json={"cameraId": "rest-1", "url": "x"}).status_code == 409
    wait_for(lambda: state_of(web, "rest-1") == "online", 60, "the camera online")
    assert "rest-1" in [c["cameraId"] for c in api(web, "GET", "/api/cameras").json()]
    status = api(web, "GET", "/api/cameras/rest-1/status").json()
    assert status["state"] == "online" and status["node"]

    r = api(web, "PATCH", "/api/cameras/rest-1", json={"frameInterval": 1.5})
    assert r.status_code == 200 and r.json()["frameInterval"] == 1.5
    r = api(web, "POST", "/api/cameras/rest-1/stop")
    assert r.status_code == 200 and r.json()["enabled"] is False
    # the registry says stopped at once; the node lets the camera go on its next round (woken by the change)
    wait_for(lambda: state_of(web, "rest-1") == "stopped" and api(web, "GET", "/api/cameras/rest-1").json()["node"]
             is None, 20, lambda: f"the camera stopped and let go (now {api(web, 'GET', '/api/cameras/rest-1').json()})")
    assert api(web, "POST", "/api/cameras/rest-1/start").json()["enabled"] is True
    wait_for(lambda: state_of(web, "rest-1") == "online", 60, "the camera online again")
    r = api(web, "PATCH", "/api/cameras/rest-1", json={"enabled": False})  # a stop by PATCH is a stop too
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["state"] == "stopped"

    assert api(web, "DELETE", "/api/cameras/rest-1").status_code == 204
    r = api(web, "GET", "/api/cameras/rest-1")
    assert r.status_code == 404 and r.json()["field"] == "cameraId"
    assert api(web, "DELETE", "/api/cameras/rest-1").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"url": "a.avi"}, "cameraId"),
    ({"cameraId": "c1"}, "url"),
    ({"cameraId": ["c1"], "url": "a.avi"}, "cameraId"),
    ({"cameraId": "../etc", "url": "a.avi"}, "cameraId"),
    ({"cameraId": "c1", "url": 42}, "url"),
    ({"cameraId": "c1", "url": ""}, "url"),
    ({"cameraId": "c1", "url": "a.avi", "frameInterval": 0}, "frameInterval"),
    ({"cameraId": "c1", "url": "a.avi", "frameInterval": "fast"}, "frameInterval"),
    ({"cameraId": "c1", "url": "a.avi", "enabled": "yes"}, "enabled"),
    ({"cameraId": "c1", "url": "a.avi", "colour": "red"}, "colour"),
])
def test_bad_camera_bodies_are_400_naming_the_field(web, body, field):
    r = api(web, "POST", "/api/cameras", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and r.json()["error"]
    assert "c1" not in [c["cameraId"] for c in api(web, "GET", "/api/cameras").json()]


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("POST", "/api/cameras", {"data": "not json", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/api/cameras", {"json": [1, 2]}, 400),
    ("POST", "/api/cameras", {"data": b"x" * (2 * 1024 * 1024)}, 413),
    ("PATCH", "/api/cameras/nope", {"json": {"url": "a.avi"}}, 404),
    ("POST", "/api/cameras/nope/start", {}, 404),
    ("POST", "/api/cameras/nope/stop", {}, 404),
    ("GET", "/api/cameras/bad%20id", {}, 400),
    ("GET", "/api/cameras/nope/latest", {}, 404),
    ("GET", "/api/cameras/c1/alerts?limit=0", {}, 400),
    ("GET", "/api/cameras/c1/alerts?limit=x", {}, 400),
    ("GET", "/api/cameras/c1/alerts?before=yesterday", {}, 400),
    ("GET", "/api/cameras/c1/alerts/nope/snapshot.jpg", {}, 404),
    ("GET", "/api/no-such-route", {}, 404),
    ("PUT", "/api/cameras", {}, 405),
])
def test_bad_requests_get_json_errors(web, method, path, kwargs, status):
    r = api(web, method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json") and r.json()["error"]


def test_patch_with_a_wrong_type_is_400(web, sample_video):
    api(web, "POST", "/api/cameras", json={"cameraId": "p1", "url": str(sample_video), "enabled": False})
    r = api(web, "PATCH", "/api/cameras/p1", json={"frameInterval": "slow"})
    assert r.status_code == 400 and r.json()["field"] == "frameInterval"
    r = api(web, "PATCH", "/api/cameras/p1", json={"url": "other.avi"})
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    assert r.json()["url"] == str(sample_video.parent.resolve() / "other.avi")  # relative to the media folder
    r = api(web, "PATCH", "/api/cameras/p1", json={"enabled": None})
    assert r.status_code == 400 and r.json()["field"] == "enabled" and "null" in r.json()["error"]
    r = api(web, "PATCH", "/api/cameras/p1", json={"imgsz": 320})  # the detector's input size for this camera
    assert r.status_code == 200 and r.json()["imgsz"] == 320
    r = api(web, "PATCH", "/api/cameras/p1", json={"imgsz": 16})
    assert r.status_code == 400 and r.json()["field"] == "imgsz"
    assert api(web, "GET", "/api/cameras/p1").json()["imgsz"] == 320


def test_a_media_path_relative_to_the_working_directory_is_taken_once(web, sample_video):
    """The web tier runs from the repository root: `.media/vtest.avi` is the sample video, not
    `.media/.media/vtest.avi`."""
    r = api(web, "POST", "/api/cameras", json={"cameraId": "rel-cwd", "url": ".media/vtest.avi", "enabled": False})
    assert r.status_code == 201, r.text
    assert r.json()["url"] == str(sample_video.resolve())
    assert api(web, "GET", "/api/cameras/rel-cwd").json()["url"] == str(sample_video.resolve())
    r = api(web, "POST", "/api/cameras", json={"cameraId": "rel-cwd-out", "url": ".media/../README.md"})
    assert r.status_code == 400 and r.json()["field"] == "url" and "outside the media folder" in r.json()["error"]


def test_alert_history_pages_and_snapshots(web, sample_video):
    api(web, "POST", "/api/cameras", json={"cameraId": "alerts-1", "url": str(sample_video)})
    wait_for(lambda: len(api(web, "GET", "/api/cameras/alerts-1/alerts").json()["items"]) >= 3, 90,
             "three alerts")
    first = api(web, "GET", "/api/cameras/alerts-1/alerts?limit=2").json()
    assert len(first["items"]) == 2 and first["next"] == first["items"][1]["alertId"]
    second = api(web, "GET", f"/api/cameras/alerts-1/alerts?limit=2&before={first['next']}").json()
    ids = [i["alertId"] for i in first["items"] + second["items"]]
    assert len(set(ids)) == len(ids) and ids == sorted(ids, reverse=True)  # newest first, no repeats
    latest = api(web, "GET", "/api/cameras/alerts-1/latest").json()
    # the latest assessment was appended to the history in the same step: a page read after it holds it (the
    # camera runs on, so newer alerts may come first; far fewer than 100 arrive between the two reads)
    history = api(web, "GET", "/api/cameras/alerts-1/alerts?limit=100").json()["items"]
    (stored,) = [i for i in history if i["taskId"] == latest["taskId"]]
    assert {k: v for k, v in stored.items() if k not in ("alertId", "snapshot")} == latest
    item = first["items"][0]
    assert item["cameraId"] == "alerts-1" and item["riskLevel"] in ("none", "low", "medium", "high")
    snap = api(web, "GET", item["snapshot"])
    assert snap.status_code == 200 and snap.headers["Content-Type"] == "image/jpeg"
    assert snap.content[:2] == b"\xff\xd8" and len(snap.content) > 1000


def test_openapi_describes_every_api_route_and_nothing_else(web, redis_server):
    from traffic_celery.settings import Settings
    from web import create_app

    app = create_app(Settings(redis_url=redis_server.url, capture_in_web=False))
    # only its routes are needed: create_app starts nothing
    routes = {(method.lower(), rule.rule.replace("<", "{").replace(">", "}"))
              for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    spec = api(web, "GET", "/api/openapi.json").json()
    described = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert described == routes
    assert spec["components"]["schemas"]["CameraCreate"]["required"] == ["cameraId", "url"]


def test_health_sees_redis_broker_workers_and_provider(web):
    body = api(web, "GET", "/api/health").json()
    assert body["status"] == "ok" and body["redis"] and body["broker"]["ok"]
    assert any(name.startswith("test-worker@") for name in body["workers"]["seen"])
    assert body["providers"]["ok"] and body["providers"]["endpoints"][0]["reachable"]


def test_health_says_what_is_missing(system_env, log_dir, isolated_redis):
    from traffic_celery.embedded_redis import free_port

    from .conftest import start_web

    dead = f"http://127.0.0.1:{free_port()}/v1"
    proc, url = start_web(isolated_redis.env({**system_env, "TC_LLM_BASE_URL": dead, "TC_CAPTURE_IN_WEB": "false"}),
                          log_dir, "web-degraded")
    try:
        r = api(url, "GET", "/api/health")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "degraded" and body["redis"]
        assert not body["workers"]["ok"] and "python -m workers" in body["workers"]["error"]  # none on its db
        (endpoint,) = body["providers"]["endpoints"]
        assert endpoint["baseUrl"] == dead and not endpoint["reachable"]
        assert "TC_LLM_BASE_URL" in endpoint["message"]
    finally:
        proc.stop()


def test_health_reports_the_event_relay_ready_before_any_websocket(system_env, log_dir):
    from .conftest import start_web

    proc, url = start_web({**system_env, "TC_CAPTURE_IN_WEB": "false"}, log_dir, "web-fresh")
    try:
        wait_for(lambda: api(url, "GET", "/api/health").json()["eventRelay"], 10, "the event relay")
        assert api(url, "GET", "/api/health").json()["websocketClients"] == 0
    finally:
        proc.stop()
