"""The Flask web tier: REST under /api, the WebSocket at /ws, the page at /. Built by :func:`create_app`."""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from flask import Flask

from traffic_celery import instruments
from traffic_celery.cameras import CaptureNode
from traffic_celery.detection import shared_detector
from traffic_celery.dispatch import Dispatcher, sent_events
from traffic_celery.keys import KeyPool
from traffic_celery.metrics import AssessmentCollector, KeyPoolCollector
from traffic_celery.router import build_router
from traffic_celery.redis_conn import connect
from traffic_celery.registry import CameraRegistry
from traffic_celery.settings import Settings, get_settings

from .health import DeepHealth
from .hub import EventHub
from .runtime import EXTENSION, Runtime
from .sock import sock

logger = logging.getLogger(__name__)


class DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.daemon = True


def create_app(settings: Optional[Settings] = None) -> Flask:
    """Build the app. Unless `capture_in_web` is off, this process is also a capture node: it starts the
    registered cameras it can claim (threads), including those of a web tier that ran before it."""
    settings = settings or get_settings()
    instruments.configure(settings)  # before any instrument is touched
    from workers.celery_app import make_app  # a producer: tasks are sent by name, never imported

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
    registry = instruments.registry(KeyPoolCollector(pool, router.limiter, router), AssessmentCollector(r))
    celery = make_app(settings)
    node = None
    if settings.capture_in_web:
        node = CaptureNode(settings, r, lambda: shared_detector(settings), Dispatcher(celery, router, sent_events(celery, settings))).start()
    hub = EventHub(settings)
    hub.ensure_started()  # relay events from the start, so /api/health reports it ready before any client
    app.extensions[EXTENSION] = Runtime(settings=settings, redis=r, hub=hub,
                                        cameras=CameraRegistry(r), node=node, keys=pool, router=router,
                                        metrics=registry, health=DeepHealth(settings, celery, pool, r))

    from . import auth, cameras_api, errors, openapi, routes, ws

    errors.install(app)
    auth.install(app, settings)
    app.register_blueprint(routes.bp)
    app.register_blueprint(cameras_api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(ws.bp)
    sock.init_app(app)
    return app
