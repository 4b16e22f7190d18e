"""The page in a real headless browser: it connects, starts the sample video, draws boxes, lists assessments."""

from __future__ import annotations

import shutil
import sys

import pytest
import requests
from playwright.sync_api import sync_playwright

from .conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-quic", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_page_adds_a_camera_and_shows_boxes_alerts_and_keys(browser, web, sample_video):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(web + "/?autostart=0")
        page.wait_for_selector("#conn.on", timeout=15_000)
        # the socket opens before connection_ack arrives: wait for the field it fills, then check what it holds
        page.wait_for_function("document.getElementById('camera-url').value !== ''", timeout=15_000)
        assert page.input_value("#camera-url") == str(sample_video)  # prefilled from connection_ack
        # a bad source is refused with the server's message, and nothing is added
        page.fill("#camera-id", "../bad")
        page.click("#add")
        page.wait_for_function("document.getElementById('form-error').textContent.includes('cameraId')")
        # add the sample video from the form
        page.fill("#camera-id", "page-cam")
        page.click("#add")
        page.wait_for_selector('.card[data-camera="page-cam"][data-state="online"]', timeout=60_000)
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
        page.wait_for_function("Number(document.querySelector('.card[data-camera=\"page-cam\"] canvas')"
                               ".dataset.boxes || 0) > 0", timeout=30_000)
        lit = page.evaluate("""() => { const c = document.getElementById('frame');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lit = 0; for (let i = 0; i < d.length; i += 400) lit += d[i] + d[i+1] + d[i+2] > 60; return lit; }""")
        assert lit > 100  # the frame itself is drawn: the canvas is not black
        # an alert appears, with its crop loaded from the snapshot route
        page.wait_for_selector("li.assessment:not(.error)", timeout=90_000)
        text = page.inner_text("li.assessment:not(.error)")
        assert any(level in text.lower() for level in ("none", "low", "medium", "high"))
        assert "camera page-cam" in text
        page.wait_for_function("(() => { const i = document.querySelector('li.assessment:not(.error) img.thumb');"
                               " return i && i.complete && i.naturalWidth > 0; })()", timeout=30_000)
        # the key pool panel lists the keys, masked
        page.wait_for_selector("#keys tbody tr", timeout=15_000)
        keys = page.inner_text("#keys tbody")
        assert "test-a" in keys and "test-b" in keys and "tk-test-secret" not in page.content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page.png"))
        # stop from the page: the card says so
        page.click("#stop")
        page.wait_for_selector('.card[data-camera="page-cam"][data-state="stopped"]', timeout=20_000)
        assert not errors, errors
    finally:
        page.close()


def test_page_starts_the_sample_video_when_nothing_runs(browser, web):
    page = browser.new_page()
    try:
        page.goto(web + "/")
        page.wait_for_selector('.card[data-camera="1"]', timeout=15_000)
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
    finally:
        page.close()


def test_page_reconnects_after_the_server_restarts(browser, system_env, log_dir, sample_video):
    from traffic_celery.embedded_redis import free_port

    from .conftest import Proc, wait_for

    port = free_port()
    env = {**system_env, "TC_WEB_PORT": str(port),
           "TC_REDIS_URL": system_env["TC_REDIS_URL"].rsplit("/", 1)[0] + "/6"}
    url = f"http://127.0.0.1:{port}"

    def start() -> Proc:
        proc = Proc("web-restart", [sys.executable, "-m", "web"], env, log_dir)
        wait_for(lambda: proc.alive() and requests.get(url + "/api/health", timeout=1).ok, 60, "the web tier")
        return proc

    proc = start()
    page = browser.new_page()
    try:
        page.goto(url + "/")  # autostart: camera 1 on the sample video
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
        proc.stop()
        page.wait_for_selector("#conn.off", timeout=15_000)
        page.evaluate("() => { document.getElementById('frame').dataset.boxes = '0'; }")
        proc = start()  # the registry restarts camera 1; the page reconnects and subscribes again
        page.wait_for_selector("#conn.on", timeout=30_000)
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
        assert page.locator(".card").count() == 1  # the same camera, not a second one
    finally:
        page.close()
        proc.stop()


def test_page_logs_in_with_the_token_and_keeps_it_out_of_urls(browser, system_env, log_dir, worker):
    from .conftest import TEST_API_TOKENS, start_web

    token = TEST_API_TOKENS[1]
    proc, url = start_web({**system_env, "TC_API_TOKEN": token}, log_dir, "web-page-token")
    urls: list[str] = []
    errors: list[str] = []

    def watch(page) -> None:
        page.on("request", lambda request: urls.append(request.url))
        page.on("websocket", lambda ws: urls.append(ws.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    watch(page)
    try:
        page.goto(url + "/")  # autostart: camera 1 on the sample video, once logged in
        page.wait_for_selector("#login:not([hidden])", timeout=15_000)
        assert page.locator(".card").count() == 0
        page.fill("#login-token", "wrong-token-xxxxxxxxxx")
        page.click("#login-submit")
        page.wait_for_function("document.getElementById('login-error').textContent.includes('wrong token')")
        page.fill("#login-token", token)
        page.click("#login-submit")
        page.wait_for_selector("#login", state="hidden", timeout=10_000)
        page.wait_for_selector("#conn.on", timeout=20_000)
        page.wait_for_selector('.card[data-camera="1"]', timeout=15_000)
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
        page.wait_for_selector("#keys tbody tr", timeout=15_000)
        # an alert's crop: an <img> the cookie alone authenticates
        page.wait_for_function("(() => { const i = document.querySelector('li.assessment:not(.error) img.thumb');"
                               " return i && i.complete && i.naturalWidth > 0; })()", timeout=90_000)
        (session,) = [c for c in page.context.cookies() if c["name"] == "tc_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["value"] != token
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
        assert token not in page.evaluate("JSON.stringify({...localStorage, ...sessionStorage})")
        assert any(u.startswith(url.replace("http", "ws") + "/ws") for u in urls)
        assert any(u.endswith("/snapshot.jpg") for u in urls)
        assert not [u for u in urls if token in u], urls
        assert not errors, errors
    finally:
        page.close()

    # an old bookmark /?token=...: logged in with once, and the token leaves the address bar
    urls.clear()
    page = browser.new_page()  # a new context: no cookie yet
    watch(page)
    try:
        page.goto(url + f"/?token={token}&autostart=0")
        page.wait_for_selector('.card[data-camera="1"]', timeout=15_000)
        page.wait_for_selector("#conn.on", timeout=20_000)
        assert token not in page.url and page.url.endswith("/?autostart=0")
        assert page.locator("#login").is_hidden()
        assert [u for u in urls if token in u] == [url + f"/?token={token}&autostart=0"], urls  # the bookmark only
        assert not errors, errors
    finally:
        page.close()
        proc.stop()


def test_the_alert_feed_shows_only_the_selected_camera(browser, web, sample_video):
    from .conftest import wait_for

    for camera_id in ("feed-a", "feed-b"):
        r = requests.post(web + "/api/cameras", json={"cameraId": camera_id, "url": str(sample_video)}, timeout=5)
        assert r.status_code == 201, r.text
    for camera_id in ("feed-a", "feed-b"):
        wait_for(lambda: requests.get(f"{web}/api/cameras/{camera_id}/alerts", timeout=5).json()["items"], 120,
                 f"an alert of {camera_id}")
    feed = "[...document.querySelectorAll('#assessments li.assessment:not(.error)')].map((li) => li.dataset.cameraId)"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(web + "/?autostart=0")
        page.wait_for_selector('.card[data-camera="feed-b"]', timeout=15_000)
        page.click('.card[data-camera="feed-a"] .card-head')
        page.wait_for_selector('li.assessment[data-camera-id="feed-a"]', timeout=15_000)
        page.click('.card[data-camera="feed-b"] .card-head')
        page.wait_for_selector('li.assessment[data-camera-id="feed-b"]', timeout=15_000)
        assert set(page.evaluate(feed)) == {"feed-b"}
        page.wait_for_timeout(3000)  # live alerts of both cameras keep coming: only feed-b's join the feed
        shown = page.evaluate(feed)
        assert set(shown) == {"feed-b"}
        assert page.inner_text("#alert-count") == str(len(shown))
    finally:
        page.close()


def test_page_edits_zones_and_calibration_and_shows_incidents(browser, web, sample_video):
    """The traffic-safety layer of the page: the zone editor, the calibration editor (and its badge), the server's
    message for a bad polygon, the context, and the incidents panel."""
    from .conftest import wait_for

    camera_id = "zone-cam"
    r = requests.post(web + "/api/cameras", json={"cameraId": camera_id, "url": str(sample_video)}, timeout=5)
    assert r.status_code == 201, r.text
    camera_url = f"{web}/api/cameras/{camera_id}"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def click_canvas(points: list[tuple[float, float]]) -> None:
        box = page.locator("#frame").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100
        for fx, fy in points:  # a position relative to the canvas: the page normalises it by the canvas size
            page.click("#frame", position={"x": fx * box["width"], "y": fy * box["height"]})

    try:
        page.goto(web + "/?autostart=0")
        page.wait_for_selector(f'.card[data-camera="{camera_id}"]', timeout=15_000)
        page.click(f'.card[data-camera="{camera_id}"] .card-head')
        page.wait_for_function(f"document.getElementById('live-title').textContent === 'camera {camera_id}'")
        # frames first: the canvas takes the video's size (and aspect ratio) with the first one
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
        assert page.inner_text("#calibration-badge") == "uncalibrated"
        # clicks on the canvas do nothing until drawing starts
        click_canvas([(0.5, 0.5)])
        page.click("#editors > summary")
        page.wait_for_selector("#zone-draw", state="visible")

        # a zone: four clicks, a name, save; the server has it in fractions of the frame
        zone_clicks = [(0.10, 0.50), (0.45, 0.52), (0.48, 0.90), (0.08, 0.88)]
        page.click("#zone-draw")
        click_canvas(zone_clicks)
        page.wait_for_function("document.getElementById('draw-hint').textContent.includes('4 points')")
        page.fill("#zone-name", "crossing")
        page.click("#zone-save")
        page.wait_for_selector('#zone-list li[data-name="crossing"]', timeout=10_000)
        assert page.inner_text("#zone-error") == ""
        camera = requests.get(camera_url, timeout=5).json()
        (zone,) = camera["zones"]
        assert zone["name"] == "crossing" and zone["kind"] == "zone"
        assert len(zone["points"]) == len(zone_clicks)
        for (x, y), (fx, fy) in zip(zone["points"], zone_clicks, strict=True):
            assert abs(x - fx) < 0.01 and abs(y - fy) < 0.01, (zone["points"], zone_clicks)

        # a mask (three clicks), then deleted from the list
        page.click("#zone-draw")
        click_canvas([(0.70, 0.05), (0.95, 0.05), (0.95, 0.30)])
        page.fill("#zone-name", "sky")
        page.select_option("#zone-kind", "mask")
        page.click("#zone-save")
        page.wait_for_selector('#zone-list li.mask[data-name="sky"]', timeout=10_000)
        assert [z["kind"] for z in requests.get(camera_url, timeout=5).json()["zones"]] == ["zone", "mask"]

        # the calibration: four corners in order around the rectangle, and its size in metres
        calib_clicks = [(0.30, 0.60), (0.60, 0.60), (0.70, 0.95), (0.20, 0.95)]
        page.click("#calib-draw")
        click_canvas(calib_clicks + [(0.5, 0.1)])  # a fifth click is ignored
        page.fill("#calib-width", "3.5")
        page.fill("#calib-length", "6")
        page.click("#calib-save")
        page.wait_for_function("document.getElementById('calibration-badge').textContent === 'calibrated'",
                               timeout=10_000)
        assert page.inner_text("#calib-error") == ""
        camera = requests.get(camera_url, timeout=5).json()
        assert camera["calibrated"] is True
        assert camera["calibration"]["world"] == [[0, 0], [3.5, 0], [3.5, 6], [0, 6]]
        for (x, y), (fx, fy) in zip(camera["calibration"]["image"], calib_clicks, strict=True):
            assert abs(x - fx) < 0.01 and abs(y - fy) < 0.01

        # the context, PATCHed
        page.fill("#camera-context", "school crossing, limit 30 km/h")
        page.click("#context-save")
        wait_for(lambda: requests.get(camera_url, timeout=5).json()["context"] == "school crossing, limit 30 km/h",
                 10, "the context saved")

        # a bow-tie: the server refuses it and its message shows next to the editor; nothing is saved
        page.click("#zone-draw")
        bow_tie = [(0.55, 0.40), (0.85, 0.70), (0.85, 0.40), (0.55, 0.70)]
        click_canvas(bow_tie)
        page.fill("#zone-name", "bow-tie")
        page.select_option("#zone-kind", "zone")
        with page.expect_response(lambda r: r.url.endswith("/zones") and r.request.method == "PUT") as put:
            page.click("#zone-save")
        refused = put.value
        assert refused.status == 400
        sent = refused.request.post_data_json["zones"]
        assert [z["name"] for z in sent] == ["crossing", "sky", "bow-tie"]  # the new zone appended to the others
        page.wait_for_function("document.getElementById('zone-error').textContent.length > 0", timeout=10_000)
        shown = page.inner_text("#zone-error")
        assert refused.json()["error"] in shown and "not simple" in shown, (shown, refused.json())
        assert [z["name"] for z in requests.get(camera_url, timeout=5).json()["zones"]] == ["crossing", "sky"]
        page.wait_for_timeout(1500)  # a few frames with the zones, the mask and the calibration drawn
        ARTIFACTS.mkdir(exist_ok=True)
        for path in ("/tmp/page-zones.png", ARTIFACTS / "page-zones.png"):
            page.screenshot(path=str(path), full_page=True)
        page.click("#zone-cancel")
        assert page.inner_text("#zone-error") == ""

        page.click('#zone-list li[data-name="sky"] .zone-delete')
        page.wait_for_selector('#zone-list li[data-name="sky"]', state="detached", timeout=10_000)
        assert [z["name"] for z in requests.get(camera_url, timeout=5).json()["zones"]] == ["crossing"]

        # the calibration cleared: the badge says so
        page.click("#calib-clear")
        page.wait_for_function("document.getElementById('calibration-badge').textContent === 'uncalibrated'",
                               timeout=10_000)
        assert requests.get(camera_url, timeout=5).json()["calibrated"] is False

        # the incidents panel: filled from GET /api/incidents?cameraId= and live `incident` events
        listed = requests.get(f"{web}/api/incidents", params={"cameraId": camera_id}, timeout=5)
        if listed.status_code == 404:
            # TODO(backend): /api/incidents is not there yet; once it is, this part runs (remove this branch)
            pytest.skip("the backend has no /api/incidents yet: the incidents panel is untested")
        assert listed.ok, listed.text
        items = wait_for(lambda: requests.get(f"{web}/api/incidents", params={"cameraId": camera_id},
                                              timeout=5).json()["items"], 120, f"an incident of {camera_id}")
        page.wait_for_selector("#incident-list li.incident", timeout=30_000)
        shown_ids = page.evaluate("[...document.querySelectorAll('#incident-list li.incident')]"
                                  ".map((li) => li.dataset.incidentId)")
        assert str(items[0]["incidentId"]) in shown_ids or len(shown_ids) >= len(items)
        first = page.locator("#incident-list li.incident").first
        assert first.get_attribute("data-state") in ("new", "update", "end")
        text = first.inner_text()
        assert any(level in text.lower() for level in ("low", "medium", "high"))
        assert f"camera {camera_id}" in text
        # an ended incident whose clip is written: a <video> in the item that loads it (VP8 WebM)
        ended = [i for i in requests.get(f"{web}/api/incidents", params={"cameraId": camera_id}, timeout=5)
                 .json()["items"] if i.get("clipUrl")]
        if ended:
            selector = f'#incident-list li.incident[data-incident-id="{ended[0]["incidentId"]}"] video'
            page.wait_for_selector(selector, state="attached", timeout=30_000)
            page.wait_for_function(f"document.querySelector('{selector}').readyState >= 1", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "page-incidents.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
        requests.delete(camera_url, timeout=5)


def test_the_reports_view_draws_the_chart_the_heat_map_and_the_ranking(browser, web, system_env):
    """The Reports tab on incidents saved in the web tier's history: an SVG chart with one bar per incident's bucket,
    the camera's heat map loaded (over its snapshot's size), the ranking, CSV links, and Refresh picking up more."""
    import csv
    import io
    import time

    import cv2
    import numpy as np

    from traffic_celery.history import History
    from traffic_celery.protocol import Incident

    camera_id, now = "rep-page", time.time()

    def save(history: History, n: int, severity: str, ago: float, point: list[int]) -> None:
        history.save(Incident.model_validate({
            "incidentId": f"{camera_id}-{n}", "cameraId": camera_id, "state": "end", "severity": severity,
            "openedBy": "near_miss", "startedAt": now - ago, "updatedAt": now - ago + 2, "endedAt": now - ago + 3,
            "zones": ["crossing"], "classes": ["car", "person"], "conflictType": "vehicle-pedestrian",
            "metrics": {"conflictType": "vehicle-pedestrian", "trackIds": [1, 2], "classes": ["car", "person"],
                        "ttc": 0.9, "distance": 3.0, "minDistance": 2.0, "units": "metric", "point": point}}))

    history = History(system_env["TC_DATABASE_URL"])  # the session web tier's own history
    try:
        history.migrate()
        for n, (severity, ago, point) in enumerate([("high", 3 * 3600, [200, 150]), ("medium", 2 * 3600, [210, 160]),
                                                    ("medium", 1800, [400, 300])]):
            save(history, n, severity, ago, point)
        ok, buf = cv2.imencode(".jpg", np.full((360, 640, 3), 70, np.uint8))
        history.put_media(f"{camera_id}-0", "snapshot", "image/jpeg", buf.tobytes())
    finally:
        history.close()
    bars = ("[...document.querySelectorAll('#report-chart svg rect.bar[data-count]')]"
            ".reduce((a, r) => a + Number(r.dataset.count), 0)")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(web + "/?autostart=0")
        page.click("#tab-reports")
        page.wait_for_selector("#live-view", state="hidden")
        page.wait_for_selector(f'#report-camera option[value="{camera_id}"]', state="attached", timeout=15_000)
        page.select_option("#report-camera", camera_id)
        page.wait_for_function(f"{bars} === 3", timeout=15_000)
        assert page.locator("#report-chart svg rect.bar.high[data-count]").count() == 1
        assert page.locator("#report-chart svg rect.bar.medium[data-count]").count() == 2
        assert page.locator("#report-chart svg g.legend").count() == 3  # high, medium, low
        assert page.locator("#report-chart svg line.axis").count() >= 2
        page.wait_for_function("(() => { const i = document.getElementById('heatmap');"
                               f" return i.dataset.camera === '{camera_id}' && i.complete && i.naturalWidth > 0; }})()",
                               timeout=15_000)
        assert page.evaluate("document.getElementById('heatmap').naturalWidth") == 640  # the snapshot's width
        row = page.inner_text(f'#rank-cameras tr[data-camera="{camera_id}"]')
        assert row.split("\t")[1:4] == [camera_id, "7", "3"]  # score high 3 + medium 2 + medium 2; 3 incidents
        href = page.get_attribute("#csv-incidents", "href")
        assert f"cameraId={camera_id}" in href and "since=" in href
        listed = list(csv.DictReader(io.StringIO(requests.get(web + href, timeout=10).text)))
        assert [r["id"] for r in listed] == [f"{camera_id}-{n}" for n in range(3)]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-reports.png"), full_page=True)
        # one more incident: Refresh shows it
        history = History(system_env["TC_DATABASE_URL"])
        try:
            save(history, 3, "high", 600, [220, 170])
        finally:
            history.close()
        page.click("#report-refresh")
        page.wait_for_function(f"{bars} === 4", timeout=15_000)
        assert not errors, errors
    finally:
        page.close()
