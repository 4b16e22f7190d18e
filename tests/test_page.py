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
