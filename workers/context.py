"""Per-process resources of the worker tasks, made on first use (after Celery's prefork fork)."""

from __future__ import annotations

import functools

import redis

from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.limiter import KeyLimiter, build_limiter
from traffic_celery.llm.router import Router, build_router
from traffic_celery.redis_conn import connect
from traffic_celery.settings import get_settings


@functools.lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return connect(get_settings())


@functools.lru_cache(maxsize=1)
def key_pool() -> KeyPool:
    return KeyPool.from_settings(get_settings())


@functools.lru_cache(maxsize=1)
def limiter() -> KeyLimiter:
    return build_limiter(get_settings(), redis_client())


@functools.lru_cache(maxsize=1)
def router() -> Router:
    return build_router(get_settings(), redis_client(), key_pool())
