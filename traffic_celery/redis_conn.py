"""Redis clients with explicit timeouts, built from settings; the only place a Redis connection is made."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis

from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)


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


def listen(settings: Settings, stop: threading.Event, on_message: Callable[[str, bytes], None], *,
           channels: Sequence[str] = (), patterns: Sequence[str] = (),
           on_ready: Callable[[], None] = lambda: None, on_lost: Callable[[], None] = lambda: None,
           name: str = "listener") -> None:
    """Relay pub/sub messages `(channel, data)` to `on_message` until `stop` is set, reconnecting with backoff
    (0.5 s doubling to 10 s) whenever Redis goes away. Runs in the caller's thread. An exception from
    `on_message` is logged with its traceback and the listener goes on with the next message."""
    backoff = 0.5
    while not stop.is_set():
        pubsub = None
        try:
            # redis-py leaves Redis.pubsub() unannotated
            pubsub = connect_pubsub(settings).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            if channels:
                pubsub.subscribe(*channels)
            if patterns:
                pubsub.psubscribe(*patterns)
            on_ready()
            backoff = 0.5
            while not stop.is_set():
                msg = pubsub.get_message(timeout=1.0)
                if msg and msg["type"] in ("message", "pmessage"):
                    try:
                        on_message(msg["channel"].decode(errors="replace"), msg["data"])
                    except Exception:  # one bad message must not end the listener (and its process's relay)
                        logger.exception("%s failed to handle a message on %r; listening on", name, msg["channel"])
        except (redis.RedisError, OSError) as exc:
            on_lost()
            logger.warning("%s lost Redis (%s); reconnecting in %.1fs", name, exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass
