"""What one web process shares between requests: settings, Redis, the event hub, the camera registry and, unless
`TC_CAPTURE_IN_WEB=false`, the capture node that runs camera loops in this process."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask
from prometheus_client import CollectorRegistry

from traffic_celery.capture.node import CaptureNode
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.router import Router
from traffic_celery.registry import CameraRegistry
from traffic_celery.settings import Settings

from .health import DeepHealth
from .hub import EventHub

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

    def start(self) -> None:
        self.hub.ensure_started()
        if self.node is not None:
            self.node.start()

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.hub.stop()


def runtime(app: Flask) -> Runtime:
    rt: Runtime = app.extensions[EXTENSION]
    return rt
