"""Chooses the API key, and so the Celery queue `llm.<key_id>`, for an assessment task: when it is enqueued and
when a worker moves it off a key that answered 429 or was disabled.

Strategies (`TC_ROUTER`):

- `least_loaded` (default): the smallest expected wait, (queued + in flight + 1) x the key's emission interval,
  so queues fill in proportion to each key's rate and all keys stay busy;
- `round_robin`: in turn, with the counter in Redis so every process shares the rotation;
- `weighted`: at random in proportion to each key's `weight`.

Keys that are disabled, switched off or cooling down are skipped. If every usable key is cooling, the one whose
cooldown ends first is chosen: its task waits on its queue instead of failing.

`queued` is the key queue's depth: on Redis the lengths of its priority lists (LLEN), on Kafka its consumer
group's lag (:mod:`traffic_celery.broker.kafka_lag`, measured at most every `TC_KAFKA_LAG_TTL` seconds, plus the
tasks this process routed to the key since), 0 on another broker.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from traffic_celery import names
from traffic_celery.broker.kafka_lag import KafkaLag, build_kafka_lag
from traffic_celery.llm.budget import priority_queues
from traffic_celery.llm.keys import ApiKey, KeyPool
from traffic_celery.llm.limiter import KeyLimiter, build_limiter, prefix
from traffic_celery.redis_conn import connect
from traffic_celery.settings import Settings

STRATEGIES = ("least_loaded", "round_robin", "weighted")


class NoKeyAvailable(RuntimeError):
    """Every key is disabled or switched off; the message says how to fix it."""


@dataclass(frozen=True)
class KeyLoad:
    key: ApiKey
    disabled: bool
    cooldown: float  # seconds left
    queued: int
    in_flight: int


# KEYS: per key its `disabled`, `cooldown` and `leases` keys. Per key: disabled (0/1), cooldown left (ms, <0 none),
# live leases: those whose expiry (the score) is after Redis's now; an expired lease (a worker killed mid-call)
# is not a call in flight.
_LOADS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('EXISTS', KEYS[i])
  out[#out + 1] = redis.call('PTTL', KEYS[i + 1])
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 2], '(' .. now, '+inf')
end
return out
"""


class Router:
    def __init__(self, r: redis.Redis, pool: KeyPool, limiter: KeyLimiter, strategy: str = "least_loaded",
                 broker: redis.Redis | None = None, lag: KafkaLag | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown router strategy {strategy!r}; use one of {STRATEGIES}")
        self._redis, self._pool, self.limiter, self.strategy = r, pool, limiter, strategy
        self._broker = broker  # the Redis broker, to read queue depths; None on another broker
        self._lag = lag  # the Kafka broker's consumer lag, the queue depths there; None on another broker
        self._loads = r.register_script(_LOADS)

    def loads(self, keys: Iterable[ApiKey]) -> list[KeyLoad]:
        keys = list(keys)
        if not keys:
            return []
        raw = self._loads(keys=[prefix(key.id) + part for key in keys for part in ("disabled", "cooldown", "leases")])
        depths = [0] * len(keys)
        if self._broker is not None:
            bpipe = self._broker.pipeline()
            for key in keys:  # a queue is one Redis list per priority step (kombu's priority queues)
                for queue in priority_queues(key.queue):
                    bpipe.llen(queue)
            lengths = bpipe.execute()
            steps = len(lengths) // len(keys)
            depths = [sum(lengths[i * steps:(i + 1) * steps]) for i in range(len(keys))]
        elif self._lag is not None:  # Kafka: the consumer lag of each key's topic (cached, never raises)
            backlog = self._lag.backlog(key.queue for key in keys)
            depths = [backlog[key.queue] for key in keys]
        return [KeyLoad(key, bool(raw[3 * i]), max(raw[3 * i + 1], 0) / 1000, int(depths[i]), int(raw[3 * i + 2]))
                for i, key in enumerate(keys)]

    def pick(self, exclude: Iterable[str] = ()) -> ApiKey:
        """The key for the next task, never one in `exclude` unless it is the only usable one."""
        key = self._choose(set(exclude))
        if self._lag is not None:  # Kafka: the task counts in the key's backlog until the next measurement sees it
            self._lag.added(key.queue)
        return key

    def _choose(self, excluded: set[str]) -> ApiKey:
        usable = [load for load in self.loads(self._pool.enabled) if not load.disabled]
        if not usable:
            raise NoKeyAvailable("no usable API key: every key is disabled or has enabled: false; fix the keys "
                                 "file (a 401/403 disables a key until it is re-enabled)")
        preferred = [load for load in usable if load.key.id not in excluded] or usable
        ready = [load for load in preferred if load.cooldown <= 0]
        if not ready:
            return min(preferred, key=lambda load: load.cooldown).key
        if self.strategy == "round_robin":
            return ready[(int(self._redis.incr(names.ROUTER_COUNTER)) - 1) % len(ready)].key
        if self.strategy == "weighted":
            return random.choices(ready, weights=[load.key.weight for load in ready])[0].key
        return min(ready, key=lambda load: ((load.queued + load.in_flight + 1) * self.limiter.interval(load.key),
                                            random.random())).key



def build_router(settings: Settings, r: redis.Redis, pool: KeyPool) -> Router:
    """The router of settings: its strategy, the shared limiter, and what reads the queue depths: the broker's
    Redis, or the Kafka broker's consumer lag."""
    broker = connect(settings, settings.effective_broker_url) if settings.broker_is_redis else None
    return Router(r, pool, build_limiter(settings, r), settings.router, broker, build_kafka_lag(settings))
