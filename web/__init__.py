"""The Flask web tier: REST under /api, the WebSocket at /ws, the page at /.

:func:`create_app` only builds: the app, its routes and the process's :class:`~web.runtime.Runtime` (Redis
client, key pool, router, event hub, and the capture node unless `TC_CAPTURE_IN_WEB=false`). It starts no thread.
The entry points (`traffic-celery web`, `python -m web`, the WSGI module for gunicorn) then call
:func:`start`, which starts the event relay and the capture node, and :func:`stop` on the way out.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask

from traffic_celery.broker.config import producer_app
from traffic_celery.capture.node import build_capture_node
from traffic_celery.history.store import History
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.router import build_router
from traffic_celery.redis_conn import connect
from traffic_celery.registry import CameraRegistry
from traffic_celery.settings import Settings, get_settings
from traffic_celery.telemetry import instruments
from traffic_celery.telemetry.collectors import (
    AssessmentCollector,
    CameraCollector,
    KeyConsumersCollector,
    KeyPoolCollector,
)
from web.health import DeepHealth
from web.hub import EventHub
from web.retention import Retention
from web.runtime import EXTENSION, Runtime, runtime
from web.sock import sock

logger = logging.getLogger(__name__)


class DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.daemon = True


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app and its runtime; nothing runs until :func:`start`."""
    settings = settings or get_settings()
    instruments.configure(settings)  # before any instrument is touched

    app = Flask(__name__, static_folder="static", static_url_path="/static")
    # the transport takes up to 1 MiB (beyond, it closes the socket with 1009); ws.py answers an `error` to any
    # message over MAX_MESSAGE and keeps the connection open
    # the socket's reader thread is a daemon: under gunicorn a request thread is not, and a reader blocked until
    # its next ping would hold the worker's exit
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": 1024 * 1024,
                                         "thread_class": DaemonThread}
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    r = connect(settings)
    pool = KeyPool.from_settings(settings)
    router = build_router(settings, r, pool)
    registry = instruments.registry(KeyPoolCollector(pool, router.limiter, router), AssessmentCollector(r),
                                    KeyConsumersCollector(pool, r), CameraCollector(CameraRegistry(r)))
    node = build_capture_node(settings, r, router) if settings.capture_in_web else None
    history = History.from_settings(settings)
    app.extensions[EXTENSION] = Runtime(settings=settings, redis=r, hub=EventHub(settings),
                                        cameras=CameraRegistry(r), node=node, keys=pool, router=router,
                                        metrics=registry,
                                        health=DeepHealth(settings, producer_app(settings), pool, r),
                                        history=history,
                                        retention=Retention(history, settings.incident_retention_days))

    from web import auth, cameras_api, errors, incidents_api, openapi, reports_api, routes, ws

    errors.install(app)
    auth.install(app, settings)
    app.register_blueprint(routes.bp)
    app.register_blueprint(cameras_api.bp)
    app.register_blueprint(incidents_api.bp)
    app.register_blueprint(reports_api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(ws.bp)
    sock.init_app(app)
    return app


def start(app: Flask) -> Flask:
    """Start the app's threads: the event relay (so /api/health reports it ready before the first client) and
    the capture node, which starts the registered cameras it can claim."""
    runtime(app).start()
    return app


def stop(app: Flask) -> None:
    """Stop the capture loops (handing the cameras over) and the event relay."""
    runtime(app).close()
