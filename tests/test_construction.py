"""Construction without side effects: importing the web tier or building its app starts no thread, reads no
settings from the environment and builds no Celery worker app; `workers` never imports `web`."""

from __future__ import annotations

import subprocess
import sys

from traffic_celery.settings import REPO_ROOT

PROBE = """
import sys, threading
import web
assert threading.active_count() == 1, [t.name for t in threading.enumerate()]
assert not [m for m in sys.modules if m == "workers" or m.startswith("workers.")], "web imported workers"
from traffic_celery.settings import Settings, get_settings
assert get_settings.cache_info().currsize == 0, "settings were read at import"
app = web.create_app(Settings(redis_url=sys.argv[1]))
assert threading.active_count() == 1, [t.name for t in threading.enumerate()]
web.start(app)
assert threading.active_count() > 1, "start() starts the relay and the capture node"
web.stop(app)
print("ok")
"""

WORKERS_PROBE = """
import sys
import workers.assess, workers.results, workers.celery_app, workers.events, workers.flower
assert not [m for m in sys.modules if m == "web" or m.startswith("web.")], "workers imported web"
from traffic_celery.settings import get_settings
assert get_settings.cache_info().currsize == 0, "settings were read at import"
import celery
assert celery.current_app.main != "traffic_celery", "a worker app was built at import"
print("ok")
"""


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_importing_and_building_the_web_tier_starts_nothing(redis_server):
    done = run(PROBE, redis_server.url)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_importing_the_worker_side_builds_no_app_and_never_imports_web():
    done = run(WORKERS_PROBE)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
