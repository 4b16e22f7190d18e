"""Redis clients with explicit timeouts, built from settings; the only place a Redis connection is made."""

from __future__ import annotations

import redis

from .settings import Settings


def connect(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client with socket timeouts and health checks, so a dead Redis gives an error, never a hang."""
    return redis.Redis.from_url(
        url or settings.effective_redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=15,
        retry_on_timeout=True,
    )


def connect_pubsub(settings: Settings) -> redis.Redis:
    """A client for a blocking pub/sub listener: no read timeout (it waits for messages), a connect timeout."""
    return redis.Redis.from_url(settings.effective_redis_url, socket_connect_timeout=settings.redis_timeout,
                                socket_keepalive=True, health_check_interval=15)
