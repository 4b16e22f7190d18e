"""What one web process shares between requests: settings, Redis, the event hub and the cameras it runs."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask
from prometheus_client import CollectorRegistry

from traffic_celery.cameras import CameraManager
from traffic_celery.keys import KeyPool
from traffic_celery.router import Router
from traffic_celery.settings import Settings

from .hub import EventHub

EXTENSION = "traffic_celery"


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    hub: EventHub
    cameras: CameraManager
    keys: KeyPool
    router: Router
    registry: CollectorRegistry

    def close(self) -> None:
        self.cameras.stop_all()
        self.hub.stop()


def runtime(app: Flask) -> Runtime:
    return app.extensions[EXTENSION]
