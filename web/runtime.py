"""What one web process shares between requests: settings, Redis, the event hub, the camera registry and, unless
`TC_CAPTURE_IN_WEB=false`, the capture node that runs camera loops in this process."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask
from prometheus_client import CollectorRegistry

from traffic_celery.capture.node import CaptureNode
from traffic_celery.history.store import History
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.router import Router
from traffic_celery.registry import CameraRegistry
from traffic_celery.settings import Settings

from .health import DeepHealth
from .hub import EventHub
from .retention import Retention

EXTENSION = "traffic_celery"


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    hub: EventHub
    cameras: CameraRegistry
    node: CaptureNode | None
    keys: KeyPool
    router: Router
    metrics: CollectorRegistry
    health: DeepHealth
    history: History
    retention: Retention

    def start(self) -> None:
        self.history.migrate()  # before the capture node's recorder writes (it migrates too: both are no-ops after)
        self.hub.ensure_started()
        self.retention.start()
        if self.node is not None:
            self.node.start()

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.retention.stop()
        self.hub.stop()
        self.history.close()


def runtime(app: Flask) -> Runtime:
    rt: Runtime = app.extensions[EXTENSION]
    return rt
