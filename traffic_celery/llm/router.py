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

A pick costs one round trip when the broker is the Redis of the keys' state (the default): one Lua script reads
every key's state and its queue's lists. With the broker on another Redis server it is two (the script, then a
pipeline of LLENs to the broker). The pick also hands back the loads it read (:meth:`Router.pick_load`), so the
dispatcher's shedding decision reuses the chosen queue's depth instead of reading it again.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from traffic_celery import names
from traffic_celery.broker.kafka_lag import KafkaLag, build_kafka_lag
from traffic_celery.llm import budget
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


# KEYS: per key its `disabled`, `cooldown` and `leases` keys, then (when ARGV[2] > 0: the broker is this Redis)
# per key the ARGV[2] lists of its queue (one per priority step). ARGV[1]: the number of keys. Returns per key:
# disabled (0/1), cooldown left (ms, <0 none), live leases: those whose expiry (the score) is after Redis's now
# (an expired lease, a worker killed mid-call, is not a call in flight); then per key the sum of its lists' LLEN.
_LOADS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nkeys, steps = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, 3 * nkeys, 3 do
  out[#out + 1] = redis.call('EXISTS', KEYS[i])
  out[#out + 1] = redis.call('PTTL', KEYS[i + 1])
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 2], '(' .. now, '+inf')
end
local first = 3 * nkeys
for i = 0, nkeys - 1 do
  if steps > 0 then
    local queued = 0
    for j = 1, steps do
      queued = queued + redis.call('LLEN', KEYS[first + i * steps + j])
    end
    out[#out + 1] = queued
  end
end
return out
"""


def same_server(a: redis.Redis, b: redis.Redis) -> bool:
    """Whether two clients talk to the same Redis server and database (then one script can read both)."""
    if a is b:
        return True
    fields = ("host", "port", "path", "db")
    ka, kb = a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs
    return all(ka.get(f) == kb.get(f) for f in fields)


class Router:
    def __init__(self, r: redis.Redis, pool: KeyPool, limiter: KeyLimiter, strategy: str = "least_loaded",
                 broker: redis.Redis | None = None, lag: KafkaLag | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown router strategy {strategy!r}; use one of {STRATEGIES}")
        self._redis, self._pool, self.limiter, self.strategy = r, pool, limiter, strategy
        self._broker = broker  # the Redis broker, to read queue depths; None on another broker
        self._lag = lag  # the Kafka broker's consumer lag, the queue depths there; None on another broker
        self._loads = r.register_script(_LOADS)
        # the broker's lists are read by the same script when the broker is this Redis: one round trip a pick
        self._depths_in_script = broker is not None and same_server(r, broker)

    @property
    def reads_queue_depths(self) -> bool:
        """Whether `KeyLoad.queued` is read from the Redis broker's lists (else the Kafka lag, or 0)."""
        return self._broker is not None

    def loads(self, keys: Iterable[ApiKey]) -> list[KeyLoad]:
        keys = list(keys)
        if not keys:
            return []
        state = [prefix(key.id) + part for key in keys for part in ("disabled", "cooldown", "leases")]
        if self._depths_in_script:  # one round trip: the key states and the broker's lists
            lists = [name for key in keys for name in priority_queues(key.queue)]
            raw = self._loads(keys=state + lists, args=[len(keys), len(budget.PRIORITY_STEPS)])
            depths = raw[3 * len(keys):]
        else:
            raw = self._loads(keys=state, args=[len(keys), 0])
            depths = [0] * len(keys)
            if self._broker is not None:  # a Redis broker on another server: its lists in a second round trip
                bpipe = self._broker.pipeline(transaction=False)
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
        return self.pick_load(exclude).key

    def pick_load(self, exclude: Iterable[str] = ()) -> KeyLoad:
        """:meth:`pick`, with the chosen key's load as read for the choice (its `queued` is the queue's depth
        before this task)."""
        load = self._choose(set(exclude))
        if self._lag is not None:  # Kafka: the task counts in the key's backlog until the next measurement sees it
            self._lag.added(load.key.queue)
        return load

    def _choose(self, excluded: set[str]) -> KeyLoad:
        usable = [load for load in self.loads(self._pool.enabled) if not load.disabled]
        if not usable:
            raise NoKeyAvailable("no usable API key: every key is disabled or has enabled: false; fix the keys "
                                 "file (a 401/403 disables a key until it is re-enabled)")
        preferred = [load for load in usable if load.key.id not in excluded] or usable
        ready = [load for load in preferred if load.cooldown <= 0]
        if not ready:
            return min(preferred, key=lambda load: load.cooldown)
        if self.strategy == "round_robin":
            return ready[(int(self._redis.incr(names.ROUTER_COUNTER)) - 1) % len(ready)]
        if self.strategy == "weighted":
            return random.choices(ready, weights=[load.key.weight for load in ready])[0]
        return min(ready, key=lambda load: ((load.queued + load.in_flight + 1) * self.limiter.interval(load.key),
                                            random.random()))



def build_router(settings: Settings, r: redis.Redis, pool: KeyPool) -> Router:
    """The router of settings: its strategy, the shared limiter, and what reads the queue depths: the broker's
    Redis, or the Kafka broker's consumer lag."""
    broker = connect(settings, settings.effective_broker_url) if settings.broker_is_redis else None
    return Router(r, pool, build_limiter(settings, r), settings.router, broker, build_kafka_lag(settings))
