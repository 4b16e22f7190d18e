"""What `/api/health` checks beyond Redis: the broker, the Celery workers (their presence keys in Redis, written
by `workers.events.Presence` on any broker) and the LLM providers.

The slow checks (a broker connect, a provider that may not answer) are cached for `CACHE_SECONDS`
so that a load balancer probing often costs one round every few seconds, and run with short timeouts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlparse

import redis
from celery import Celery

from traffic_celery import names
from traffic_celery.llm.keys import KeyPool
from traffic_celery.settings import Settings

CACHE_SECONDS = 5.0
TIMEOUT = 1.0


def provider_reachable(base_url: str, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """A TCP connect to the provider's host and port: reachable or not, without spending a call."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True, "reachable"
    except OSError as exc:
        return False, f"cannot connect to {parsed.hostname}:{port} ({exc.strerror or exc}); check TC_LLM_BASE_URL"


class DeepHealth:
    def __init__(self, settings: Settings, celery: Celery, keys: KeyPool, r: redis.Redis):
        self._settings, self._celery, self._keys, self._redis = settings, celery, keys, r
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] = (0.0, {})

    def check(self) -> dict[str, Any]:
        with self._lock:
            at, cached = self._cached
            if time.monotonic() - at < CACHE_SECONDS:
                return cached
            result = {"broker": self._broker(), "workers": self._workers(), "providers": self._providers()}
            self._cached = (time.monotonic(), result)
            return result

    def _broker(self) -> dict[str, Any]:
        try:
            with self._celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=TIMEOUT)
            return {"ok": True}
        except Exception as exc:  # kombu raises transport-specific errors
            return {"ok": False, "error": f"broker unreachable ({exc}); check TC_BROKER_URL"}

    def _workers(self) -> dict[str, Any]:
        try:
            seen = seen_workers(self._redis)
        except redis.RedisError as exc:
            return {"ok": False, "seen": [], "error": f"cannot read the workers' presence ({exc})"}
        hostnames = [doc["hostname"] for doc in seen]
        return {"ok": bool(seen), "seen": hostnames,
                **({} if seen else {"error": "no Celery worker is running; start one: python -m workers"})}

    def _providers(self) -> dict[str, Any]:
        urls = sorted({key.base_url or self._settings.llm_base_url for key in self._keys})
        checks = {url: provider_reachable(url) for url in urls}
        return {"ok": all(ok for ok, _ in checks.values()),
                "endpoints": [{"baseUrl": url, "reachable": ok, "message": msg} for url, (ok, msg) in checks.items()]}


def seen_workers(r: redis.Redis) -> list[dict[str, Any]]:
    """The workers whose presence key is alive (hostname, pid, queues), by hostname."""
    keys = sorted(r.scan_iter(match=names.worker_key("*"), count=500))
    return [json.loads(doc) for doc in (r.mget(keys) if keys else []) if doc]
