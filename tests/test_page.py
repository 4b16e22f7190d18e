"""The page in a real headless browser: it connects, starts the sample video, draws boxes, lists assessments."""

from __future__ import annotations

import shutil

import pytest
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


def test_page_shows_video_boxes_and_assessments(browser, web, sample_video):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(web + "/")
        page.wait_for_selector("#conn.on", timeout=15_000)
        assert page.input_value("#camera-url") == str(sample_video)  # prefilled from connection_ack
        page.wait_for_function("Number(document.getElementById('frame').dataset.boxes || 0) > 0", timeout=90_000)
        # the frame itself is drawn: the canvas is not black
        lit = page.evaluate("""() => { const c = document.getElementById('frame');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lit = 0; for (let i = 0; i < d.length; i += 400) lit += d[i] + d[i+1] + d[i+2] > 60; return lit; }""")
        assert lit > 100
        page.wait_for_selector("li.assessment:not(.error)", timeout=90_000)
        text = page.inner_text("li.assessment:not(.error)")
        assert any(level in text.lower() for level in ("none", "low", "medium", "high"))
        assert "camera 1" in text
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page.png"))
        assert not errors, errors
    finally:
        page.evaluate("() => document.getElementById('stop').click()")
        page.close()
