"""The per-key rate limiter, shared by every worker process on every machine: state in Redis, one atomic Lua
script per acquisition. It is the only place API-key limits are enforced.

Per key `<id>` (all under `tc:key:<id>:`):

- `tat`: GCRA theoretical arrival time. One emission interval `T = max(1/qps, 60/rpm) * (1 + margin)` enforces
  both the QPS and the RPM limit (calls are spaced at least T apart, so no window of a second or a minute ever
  holds more than the limit), and the margin absorbs network jitter between the grant and the provider's clock.
  `acquire(max_wait=w)` may grant a reservation up to `w` seconds ahead. The worker uses `w=0` and sleeps
  between attempts instead (see `workers.assess`): a grant taken at the moment of sending cannot be bunched by a
  late wake-up, which is what keeps the provider's own count under the limit.
- `sent`: the send times of the last calls, by slot and then by the time the worker confirms the request was
  written. Besides the spacing, no slot is granted while the last `(1 + margin)` seconds before it already hold
  `qps` sends: this mirrors the provider's strict one-second window on the real send times, so a worker that
  was late to send (a busy machine can delay a process by tens of milliseconds) pushes the next calls back
  instead of bunching with them.
- `leases`: a sorted set of in-flight calls scored by expiry, capped at `max_in_flight`. A worker killed
  mid-call leaks nothing: its lease expires after `lease_ttl`.
- `cooldown` (a key with a TTL) after a 429 or repeated failures, `disabled` after a 401/403: no grant while set.
- `stats`: a hash of counters (calls, successes, rate_limited, failures) for `/api/keys` and metrics.

A call costs three round trips: `acquire` (the grant), `confirm` (its send time, while the provider works on
it) and `finish` (the lease released and the call counted with its outcome, in one script).

Times come from Redis's own clock (`TIME`), so machines with skewed clocks still share one schedule.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Literal

import redis

from traffic_celery.llm.keys import ApiKey
from traffic_celery.protocol import KeyState
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

ACQUIRE = """
local tat_key, leases_key, cooldown_key, disabled_key, sent_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local interval, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_in_flight, lease_ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_id, tolerance = ARGV[5], tonumber(ARGV[6])
local window_limit, window = tonumber(ARGV[7]), tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call('EXISTS', disabled_key) == 1 then
  return {'disabled', '0', redis.call('GET', disabled_key)}
end
local cool = redis.call('PTTL', cooldown_key)
if cool > 0 then
  return {'cooling', tostring(cool / 1000), ''}
end
redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
if redis.call('ZCARD', leases_key) >= max_in_flight then
  local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
  return {'busy', tostring(math.min(interval, tonumber(first[2]) - now)), ''}
end
local tat = tonumber(redis.call('GET', tat_key) or '0')
if tat < now - tolerance then tat = now - tolerance end
local slot = math.max(now, tat)
local at = slot
-- the guard: never more than window_limit sends, by their confirmed times, in any window before the slot;
-- if the window is full at the slot, the slot moves to when it frees
redis.call('ZREMRANGEBYSCORE', sent_key, '-inf', now - 2 * window)
local recent = redis.call('ZRANGEBYSCORE', sent_key, '(' .. (at - window), '+inf', 'WITHSCORES')
local n = #recent / 2
if n >= window_limit then
  at = math.max(at, tonumber(recent[2 * (n - window_limit) + 2]) + window)
end
local wait = at - now
if wait > max_wait then
  return {'wait', tostring(wait - max_wait), ''}
end
-- the schedule goes on from the theoretical time (tolerance keeps a late grant's catch-up), or from the moved slot
local base = tat
if at > slot then base = at end
redis.call('SET', tat_key, tostring(base + interval), 'PX', math.ceil((at + interval - now) * 1000) + 60000)
redis.call('ZADD', sent_key, at, lease_id)
redis.call('PEXPIRE', sent_key, math.ceil((wait + 2 * window) * 1000) + 1000)
redis.call('ZADD', leases_key, now + wait + lease_ttl, lease_id)
redis.call('PEXPIRE', leases_key, math.ceil((wait + lease_ttl) * 1000) + 60000)
return {'granted', tostring(wait), lease_id}
"""

CONFIRM = """
redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[2], ARGV[1])
return 1
"""

RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# The end of a call, in one round trip: the lease released, the call counted with its outcome (a stats field:
# successes, failures, rate_limited), and after a success the adaptive 429 backoff reset.
FINISH = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'calls', 1)
if ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
if ARGV[2] == 'successes' then
  redis.call('DEL', KEYS[3])
end
return 1
"""
OUTCOMES = ("successes", "failures", "rate_limited", "")


def prefix(key_id: str) -> str:
    return f"tc:key:{key_id}:"


@dataclass(frozen=True)
class Grant:
    """`granted`: call after `wait` seconds and release `lease`; otherwise `state` says why not, and `wait` when
    it is worth trying again (`cooling`, `busy`, `wait`), or `reason` (`disabled`)."""

    state: str
    wait: float
    lease: str = ""
    reason: str = ""

    @property
    def granted(self) -> bool:
        return self.state == "granted"


class KeyLimiter:
    """Acquire/release against the shared state of the keys; one instance per process is enough."""

    def __init__(self, r: redis.Redis, margin: float = 0.03, max_wait: float = 1.0, lease_ttl: float = 60.0,
                 tolerance: float = 0.0):
        self._redis = r
        self.tolerance = tolerance
        self._acquire = r.register_script(ACQUIRE)
        self._release = r.register_script(RELEASE)
        self._finish = r.register_script(FINISH)
        self._confirm = r.register_script(CONFIRM)
        self.margin, self.max_wait, self.lease_ttl = margin, max_wait, lease_ttl
        self._owner = f"{socket.gethostname()}:{os.getpid()}"

    def interval(self, key: ApiKey) -> float:
        return max(1.0 / key.qps, 60.0 / key.rpm) * (1.0 + self.margin)

    def horizon(self, key: ApiKey) -> float:
        """How far ahead a slot may be reserved: `max_wait`, and at least the key's next slot, so a slow key
        always has its next call waiting for it."""
        return max(self.max_wait, 1.5 * self.interval(key))

    def acquire(self, key: ApiKey, max_wait: float | None = None) -> Grant:
        p = prefix(key.id)
        lease = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        state, wait, extra = self._acquire(
            keys=[p + "tat", p + "leases", p + "cooldown", p + "disabled", p + "sent"],
            args=[self.interval(key), self.horizon(key) if max_wait is None else max_wait, key.max_in_flight,
                  self.lease_ttl, lease, self.tolerance, max(1, int(key.qps)), 1.0 + self.margin])
        state, extra = state.decode(), extra.decode()
        if state == "granted":
            return Grant(state, float(wait), lease=extra)
        return Grant(state, float(wait), reason=extra)

    def confirm(self, key: ApiKey, lease: str, sent_at: float) -> None:
        """Record when the call really went out (later than its slot if the worker was late): the window guard
        counts real send times, so a late call pushes the next ones back instead of bunching with them."""
        self._confirm(keys=[prefix(key.id) + "sent"], args=[lease, sent_at])

    def release(self, key: ApiKey, lease: str) -> None:
        """Give the lease back without a call (the call was not sent)."""
        self._release(keys=[prefix(key.id) + "leases"], args=[lease])

    def finish(self, key: ApiKey, lease: str, outcome: str) -> None:
        """A call ended: release its lease, count it in `calls` and in `outcome` (`successes`, `failures`,
        `rate_limited`, or "" for nothing more), and after a success reset the 429 backoff: one round trip, where
        release + count + :meth:`succeeded` took three."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown call outcome {outcome!r}; use one of {OUTCOMES}")
        p = prefix(key.id)
        self._finish(keys=[p + "leases", p + "stats", p + "backoff"], args=[lease, outcome])

    def blocked(self, key: ApiKey) -> str | None:
        """"cooling" or "disabled" if the key must not be called now, else None (a check before each send)."""
        p = prefix(key.id)
        pipe = self._redis.pipeline(transaction=False)  # redis-py types pipelined commands as their results
        pipe.exists(p + "disabled")
        pipe.exists(p + "cooldown")
        disabled, cooling = pipe.execute()
        return "disabled" if disabled else "cooling" if cooling else None

    # --- key state ------------------------------------------------------------------------------------------
    def cool_down(self, key: ApiKey, seconds: float) -> None:
        self._redis.set(prefix(key.id) + "cooldown", f"{seconds:.3f}", px=max(1, int(seconds * 1000)))

    def next_backoff(self, key: ApiKey, first: float = 10.0, cap: float = 120.0) -> float:
        """Adaptive cooldown when the provider gives no Retry-After: 10 s, doubling up to 120 s until a success."""
        current = self._redis.get(prefix(key.id) + "backoff")
        seconds = first if current is None else min(cap, float(current) * 2)
        self._redis.set(prefix(key.id) + "backoff", seconds, ex=int(cap * 4))
        return seconds

    def succeeded(self, key: ApiKey) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(prefix(key.id) + "backoff")
        pipe.hincrby(prefix(key.id) + "stats", "successes", 1)
        pipe.execute()

    def count(self, key: ApiKey, field: str, n: int = 1) -> None:
        self._redis.hincrby(prefix(key.id) + "stats", field, n)

    def disable(self, key: ApiKey, reason: str) -> None:
        self._redis.set(prefix(key.id) + "disabled", reason)
        logger.error("disabled key %s: %s", key.id, reason)

    def enable(self, key: ApiKey) -> None:
        self._redis.delete(prefix(key.id) + "disabled", prefix(key.id) + "cooldown", prefix(key.id) + "backoff")

    def state(self, key: ApiKey) -> KeyState:
        """What `/api/keys` and the metrics show of a key (never its secret)."""
        p = prefix(key.id)
        pipe = self._redis.pipeline()
        pipe.get(p + "disabled")
        pipe.pttl(p + "cooldown")
        pipe.zcount(p + "leases", "(" + str(self._now()), "+inf")
        pipe.hgetall(p + "stats")
        disabled, cool_ms, in_flight, stats = pipe.execute()
        stats = {k.decode(): int(v) for k, v in stats.items()}
        state: Literal["ready", "cooling", "disabled", "off"] = (
            "disabled" if disabled else "cooling" if cool_ms > 0 else "ready" if key.enabled else "off")
        return {"state": state, "disabledReason": disabled.decode() if disabled else None,
                "cooldownLeft": round(max(cool_ms, 0) / 1000, 3), "inFlight": int(in_flight),
                "calls": stats.get("calls", 0), "successes": stats.get("successes", 0),
                "rateLimited": stats.get("rate_limited", 0), "failures": stats.get("failures", 0),
                "cooldowns": stats.get("cooldowns", 0)}

    def _now(self) -> float:
        sec, usec = self._redis.time()
        return sec + usec / 1e6


def build_limiter(settings: Settings, r: redis.Redis) -> KeyLimiter:
    return KeyLimiter(r, margin=settings.limit_margin, max_wait=settings.limit_max_wait,
                      lease_ttl=settings.lease_ttl or settings.llm_timeout + 10, tolerance=settings.limit_tolerance)
