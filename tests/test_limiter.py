"""The shared limiter and the router, against a real Redis."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import redis

from traffic_celery.llm.keys import ApiKey, KeyPool
from traffic_celery.llm.limiter import KeyLimiter
from traffic_celery.llm.router import NoKeyAvailable, Router

from .conftest import wait_for


@pytest.fixture()
def r(isolated_redis) -> redis.Redis:
    return isolated_redis.client


def key(key_id: str = "k", **kw) -> ApiKey:
    return ApiKey(id=key_id, secret=f"sk-{key_id}-secret-000000", **kw)


def test_grants_are_spaced_by_the_qps_interval(r):
    lim = KeyLimiter(r, margin=0.0, max_wait=10)
    k = key(qps=4, rpm=10_000, max_in_flight=100)
    waits = [lim.acquire(k).wait for _ in range(5)]
    # one call now, then one every 0.25 s: reservations, never two in the same slot
    for i, w in enumerate(waits):
        assert w == pytest.approx(0.25 * i, abs=0.02)


def test_rpm_sets_the_interval_when_it_is_the_tighter_limit(r):
    lim = KeyLimiter(r, margin=0.05, max_wait=100)
    assert lim.interval(key(qps=10, rpm=30)) == pytest.approx(2.0 * 1.05)   # 60/30 s beats 1/10 s
    assert lim.interval(key(qps=2, rpm=600)) == pytest.approx(0.5 * 1.05)
    k = key(qps=10, rpm=30, max_in_flight=100)
    waits = [lim.acquire(k).wait for _ in range(3)]
    assert waits[2] == pytest.approx(2 * 2.1, abs=0.05)  # 30 per minute, never 10 per second


def test_a_slot_beyond_the_horizon_is_refused_with_the_wait(r):
    lim = KeyLimiter(r, margin=0.0, max_wait=0.3)
    k = key(qps=2, max_in_flight=100)
    assert lim.horizon(k) == pytest.approx(0.75)   # at least the next slot of a slow key can be reserved
    assert lim.acquire(k).wait == pytest.approx(0.0, abs=0.02)
    assert lim.acquire(k).wait == pytest.approx(0.5, abs=0.02)   # reserved: the next slot
    refused = lim.acquire(k)               # the one after is 1.0 s away, beyond the 0.75 s horizon
    assert refused.state == "wait" and not refused.granted
    assert refused.wait == pytest.approx(1.0 - 0.75, abs=0.02)  # come back when it is within the horizon
    assert lim.acquire(k).state == "wait"  # nothing was reserved by the refusal


def test_the_window_guard_counts_real_send_times(r):
    """A call that went out late pushes the next ones back instead of bunching with them."""
    lim = KeyLimiter(r, margin=0.0, max_wait=10)
    k = key(qps=2, rpm=100_000, max_in_flight=100)
    first = lim.acquire(k)
    seconds, microseconds = r.time()  # one reading of the server's clock
    now = seconds + microseconds / 1e6
    lim.confirm(k, first.lease, now + 0.3)   # the worker was 300 ms late to send it
    second = lim.acquire(k)                  # spacing alone would put it at 0.5 s
    assert second.wait == pytest.approx(0.5, abs=0.03)
    third = lim.acquire(k)                   # ... and this at 1.0 s, but 2 sends in (0.3, 1.3] is the limit
    assert third.wait == pytest.approx(1.3, abs=0.03)


def test_in_flight_cap_and_release(r):
    lim = KeyLimiter(r, margin=0.0, max_wait=100)
    k = key(qps=1000, max_in_flight=2)
    a, b = lim.acquire(k), lim.acquire(k)
    assert a.granted and b.granted
    assert lim.acquire(k).state == "busy"
    assert lim.state(k)["inFlight"] == 2
    lim.release(k, a.lease)
    assert lim.acquire(k).granted


def test_a_dead_callers_lease_expires(r):
    """A worker killed mid-call never releases; its lease must expire by itself."""
    lim = KeyLimiter(r, margin=0.0, max_wait=100, lease_ttl=0.5)
    k = key(qps=1000, max_in_flight=1)
    assert lim.acquire(k).granted   # never released
    assert lim.acquire(k).state == "busy"
    wait_for(lambda: lim.acquire(k).granted, 5, "the lease to expire")


def test_cooldown_disable_and_adaptive_backoff(r):
    lim = KeyLimiter(r)
    k = key()
    lim.cool_down(k, 5)
    grant = lim.acquire(k)
    assert grant.state == "cooling" and 4 < grant.wait <= 5
    assert lim.state(k)["state"] == "cooling"
    assert [lim.next_backoff(k) for _ in range(6)] == [10, 20, 40, 80, 120, 120]
    lim.succeeded(k)
    assert lim.next_backoff(k) == 10      # a success resets the backoff
    lim.disable(k, "401 from the provider")
    assert lim.acquire(k).state == "disabled"
    assert lim.state(k)["disabledReason"] == "401 from the provider"
    lim.enable(k)
    assert lim.acquire(k).granted


def test_router_least_loaded_fills_queues_in_proportion_to_rate(r):
    keys = [key("slow", qps=2, rpm=10_000), key("fast", qps=8, rpm=10_000)]
    router = Router(r, KeyPool(keys), KeyLimiter(r), "least_loaded", broker=r)
    for _ in range(50):
        chosen = router.pick()
        r.rpush(chosen.queue, "task")        # as the broker would hold it
    assert r.llen("llm.slow") == 10 and r.llen("llm.fast") == 40


def test_router_skips_cooling_and_disabled_keys(r):
    keys = [key("a"), key("b"), key("c")]
    lim = KeyLimiter(r)
    router = Router(r, KeyPool(keys), lim, "round_robin")
    lim.cool_down(keys[0], 30)
    lim.disable(keys[1], "revoked")
    assert {router.pick().id for _ in range(6)} == {"c"}
    assert router.pick(exclude={"c"}).id == "a"  # only a cooling key is left: the one that comes back first
    lim.disable(keys[2], "revoked")
    lim.disable(keys[0], "revoked")
    with pytest.raises(NoKeyAvailable, match="disabled"):
        router.pick()


def test_round_robin_and_weighted(r):
    keys = [key("a", weight=1), key("b", weight=3), key("off", enabled=False)]
    rr = Router(r, KeyPool(keys), KeyLimiter(r), "round_robin")
    assert [rr.pick().id for _ in range(4)] == ["a", "b", "a", "b"]
    random.seed(7)
    weighted = Router(r, KeyPool(keys), KeyLimiter(r), "weighted")
    counts = Counter(weighted.pick().id for _ in range(2000))
    assert set(counts) == {"a", "b"}
    assert 2.5 < counts["b"] / counts["a"] < 3.5


def test_tolerance_catches_up_a_late_grant_but_never_bunches_more(r):
    lim = KeyLimiter(r, margin=0.0, max_wait=10, tolerance=0.05)
    k = key(qps=10, rpm=100_000, max_in_flight=100)
    waits = [lim.acquire(k).wait for _ in range(4)]
    # the first grant counts as 50 ms early (the tolerance), so the schedule is 0, 0.05, 0.15, 0.25 from now
    assert waits == pytest.approx([0.0, 0.05, 0.15, 0.25], abs=0.02)
    assert waits[-1] - waits[0] >= 3 * 0.1 - 0.05 - 0.02  # q calls never span less than (q-1)T - tolerance


def test_router_counts_every_priority_list_of_a_queue(r):
    """With priorities, kombu keeps one Redis list per priority step: a queue's depth is their sum (the router
    once read only the plain list, where just priority 0 lands)."""
    from traffic_celery.llm import budget

    keys = [key("p", qps=2, rpm=10_000)]
    router = Router(r, KeyPool(keys), KeyLimiter(r), "least_loaded", broker=r)
    lists = budget.priority_queues("llm.p")
    assert lists[0] == "llm.p" and len(lists) == 10
    r.rpush(lists[0], "urgent")
    r.rpush(lists[9], "reassess", "reassess")
    assert router.loads(keys)[0].queued == 3
