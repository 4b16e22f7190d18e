"""Chooses the API key (and so the Celery queue `llm.<key_id>`) for an assessment task when it is enqueued.

Round robin over the enabled keys, with the counter in Redis so every capture process shares the rotation.
"""

from __future__ import annotations

import redis

from . import names
from .keys import ApiKey, KeyPool


class NoKeyAvailable(RuntimeError):
    """Every key is disabled; the message says how to fix it."""


def pick_key(r: redis.Redis, pool: KeyPool) -> ApiKey:
    keys = pool.enabled
    if not keys:
        raise NoKeyAvailable("no enabled API key; enable one in the keys file (enabled: true)")
    return keys[(int(r.incr(names.ROUTER_COUNTER)) - 1) % len(keys)]
