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
