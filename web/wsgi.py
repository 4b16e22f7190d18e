"""The WSGI app for a process manager: `gunicorn -c web/gunicorn_conf.py web.wsgi:app`.

Each gunicorn worker builds its own app after the fork (no `--preload`): its own Redis pool, event relay and
capture node, so every worker delivers every event to its WebSocket clients and the workers share cameras through
the registry's leases.
"""

from __future__ import annotations

from traffic_celery.logs import setup_logging
from traffic_celery.settings import get_settings
from web import create_app, start

settings = get_settings()
setup_logging(settings, "web")
app = start(create_app(settings))
