"""The cheaper assessment path keeps its guarantees (bench/load.py measures the cost; these check what it must not
break), against a real Redis, real worker processes and a real HTTP server:

- the limiter's one-script end of a call (`finish`) releases, counts and resets the backoff, and several processes
  hammering one key still never exceed its QPS (by confirmed send times) nor its in-flight cap;
- a dispatch costs the router's one script, the task's LPUSH and its `task-sent` event, and no result
  subscription; a `reassess` job is still shed on the depth that script read;
- the LLM worker stores and publishes the assessment itself, with no `results` worker running and no callback
  task sent; Celery keeps no result for it;
- the callback older producers linked still stores and publishes once per task id however often it is delivered,
  serialises once (the event carries exactly the stored JSON), and stores no Celery result;
- the worker's task events still all reach a monitor (Flower), batched into fewer messages, and the callback has
  no `task-sent`;
- the LLM client reuses keep-alive connections across threads and still reports when the request went out and
  what failed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from traffic_celery import names, store
from traffic_celery.broker.config import FastReprAMQP, fast_repr, producer_app
from traffic_celery.llm import budget
from traffic_celery.llm import client as llm_client
from traffic_celery.llm.dispatch import ASSESS_TASK, CALLBACK_TASK, Dispatcher
from traffic_celery.llm.keys import ApiKey, KeyPool
from traffic_celery.llm.limiter import KeyLimiter
from traffic_celery.llm.router import Router, build_router
from traffic_celery.protocol import Assessment, decode
from traffic_celery.settings import Settings
from workers.events import EVENT_FLUSH_INTERVAL

from .conftest import TEST_KEYS, IsolatedRedis, Proc, wait_for


def key(key_id: str = "k", **kw: Any) -> ApiKey:
    return ApiKey(id=key_id, secret=f"sk-{key_id}-secret-000000", **kw)


# --- the limiter ------------------------------------------------------------------------------------------------

def test_finish_releases_the_lease_counts_the_outcome_and_resets_the_backoff(isolated_redis):
    r = isolated_redis.client
    lim = KeyLimiter(r, margin=0.0, max_wait=100)
    k = key(qps=1000, max_in_flight=2)
    a, b = lim.acquire(k), lim.acquire(k)
    assert a.granted and b.granted and lim.acquire(k).state == "busy"
    assert lim.next_backoff(k) == 10  # a 429 streak is on
    lim.finish(k, a.lease, "successes")
    assert lim.acquire(k).granted  # a's slot is free again (and taken by this grant)
    assert lim.next_backoff(k) == 10  # the success reset the streak: back to the first cooldown
    lim.finish(k, b.lease, "rate_limited")
    stats = lim.state(k)
    assert (stats["calls"], stats["successes"], stats["rateLimited"], stats["failures"]) == (2, 1, 1, 0)
    assert stats["inFlight"] == 1
    with pytest.raises(ValueError, match="unknown call outcome"):
        lim.finish(k, "lease", "bogus")


def _hammer(url: str, seconds: float, out: Any) -> None:
    """One worker-like process: acquire, sleep to the slot, send (confirm), hold the call 40 ms, finish."""
    r = redis.Redis.from_url(url)
    lim = KeyLimiter(r, margin=0.015, max_wait=0.25, lease_ttl=30, tolerance=0.005)
    k = ApiKey(id="shared", secret="sk-shared-secret-000000", qps=20, rpm=100_000, max_in_flight=3)
    calls = []
    end = time.time() + seconds
    while time.time() < end:
        grant = lim.acquire(k)
        if not grant.granted:
            time.sleep(min(grant.wait, 0.05) or 0.005)
            continue
        granted_at = time.time()
        time.sleep(grant.wait)
        sent = time.time()
        lim.confirm(k, grant.lease, sent)
        time.sleep(0.04)  # the call
        finished = time.time()
        lim.finish(k, grant.lease, "successes")
        calls.append((granted_at, sent, finished))
    out.put(calls)


def test_limits_hold_across_processes_with_the_one_script_finish(isolated_redis):
    """Four processes on one key of 20 QPS and 3 in flight for 3 s: no second (by send times) holds more than 20
    sends, never more than 3 calls overlap (lease taken at the grant, given back by `finish`), and the key was
    kept busy (the limits bind, so the test could fail)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(isolated_redis.url, 3.0, out)) for _ in range(4)]
    for p in procs:
        p.start()
    calls = [c for _ in procs for c in out.get(timeout=60)]
    for p in procs:
        p.join(30)
    sends = sorted(sent for _granted, sent, _end in calls)
    busiest = max(sum(1 for s in sends if t <= s < t + 1.0) for t in sends)
    assert busiest <= 20, busiest
    # every moment a call is held, from its grant to its finish: at most 3 at once
    edges = sorted([(g, 1) for g, _s, _e in calls] + [(e, -1) for _g, _s, e in calls], key=lambda x: (x[0], x[1]))
    held = peak = 0
    for _t, step in edges:
        held += step
        peak = max(peak, held)
    assert peak <= 3, peak
    assert len(calls) >= 30 and busiest >= 15, (len(calls), busiest)  # the limits were reached, not idle
    stats = KeyLimiter(isolated_redis.client).state(
        ApiKey(id="shared", secret="sk-shared-secret-000000", qps=20, max_in_flight=3))
    assert stats["calls"] == stats["successes"] == len(calls) and stats["inFlight"] == 0


# --- the router and the dispatcher: round trips -------------------------------------------------------------------

HANDSHAKE = {"HELLO", "SELECT", "CLIENT", "AUTH", "PING", "ECHO"}  # a new connection's, not the operation's


class Monitor:
    """Redis's MONITOR in a thread: the commands clients send to one database (not those a Lua script runs, nor
    a new connection's handshake), until stopped."""

    def __init__(self, r: redis.Redis):
        self._r = r
        self._db = r.connection_pool.connection_kwargs.get("db", 0)
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        with self._r.monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                if cmd["command"] == "ECHO end-of-monitor":
                    return
                name = cmd["command"].split(" ", 1)[0].upper()
                if cmd.get("client_type") != "lua" and cmd.get("db") == self._db and name not in HANDSHAKE:
                    self.commands.append(name)

    def stop(self) -> list[str]:
        self._r.echo("end-of-monitor")
        self._thread.join(5)
        return self.commands


def test_a_pick_is_one_round_trip_when_the_broker_is_this_redis(isolated_redis, redis_server):
    r = isolated_redis.client
    keys = [key("a", qps=2, rpm=10_000), key("b", qps=8, rpm=10_000)]
    lists = budget.priority_queues("llm.a")
    r.rpush(lists[0], "t")
    r.rpush(lists[7], "t", "t")
    router = Router(r, KeyPool(keys), KeyLimiter(r), "least_loaded", broker=redis.Redis.from_url(isolated_redis.url))
    router.pick()  # the first call loads the script (SCRIPT LOAD): not what is counted
    monitor = Monitor(redis.Redis.from_url(isolated_redis.url))
    load = router.pick_load()
    assert monitor.stop() == ["EVALSHA"]  # states and every priority list of every queue, in one script
    assert load.key.id == "b"
    assert {ld.key.id: ld.queued for ld in router.loads(keys)} == {"a": 3, "b": 0}

    # a broker on another database (as on another server): the lists are read there, in a second round trip
    other_db = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{(isolated_redis.db % 15) + 1}")
    other_db.delete(*budget.priority_queues("llm.b"))
    other_db.rpush(budget.priority_queues("llm.b")[9], "t", "t", "t", "t")
    try:
        split = Router(r, KeyPool(keys), KeyLimiter(r), "least_loaded", broker=other_db)
        assert {ld.key.id: ld.queued for ld in split.loads(keys)} == {"a": 0, "b": 4}
    finally:
        other_db.delete(*budget.priority_queues("llm.b"))


def _jpeg() -> bytes:
    import cv2
    import numpy as np

    return bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 127, np.uint8))[1].tobytes())


def test_a_dispatch_costs_three_round_trips_and_subscribes_to_nothing(isolated_redis):
    """The router's script, the task's LPUSH and its task-sent event's PUBLISH: no SUBSCRIBE to the task's result
    channel (producers never wait on results), and the result is still readable by id."""
    r = isolated_redis.client
    settings = Settings(redis_url=isolated_redis.url, llm_api_keys=TEST_KEYS)
    app = producer_app(settings)
    try:
        dispatch = Dispatcher(app, build_router(settings, r, KeyPool.from_settings(settings)))
        fields = {"cameraId": "rt", "groupId": "g1", "groupIndex": 0, "imageKey": store.store_image(r, _jpeg(), 60),
                  "features": {"objectCount": 2, "classCounts": {"car": 1, "person": 1}, "minGap": 0.3},
                  "memberTrackIds": [1, 2], "frameTimestamp": time.time(), "reason": "appeared"}
        for _ in range(4):  # the first sends on each key declare its queue and connect: not what is counted
            dispatch(fields)
        monitor = Monitor(redis.Redis.from_url(isolated_redis.url))
        task_id = dispatch({**fields, "groupId": "g2"})
        commands = monitor.stop()
        assert sorted(commands) == ["EVALSHA", "LPUSH", "PUBLISH"], " ".join(commands)
        assert r.pubsub_numsub(f"celery-task-meta-{task_id}") == [(f"celery-task-meta-{task_id}".encode(), 0)]
        assert app.AsyncResult(task_id).state == "PENDING"  # read from the backend as before (no worker here)

        # a reassess job is shed on the depth the pick read: 30 more queued on each key, 5 QPS -> over 6 s
        for k in ("test-a", "test-b"):
            r.rpush(budget.priority_queues(f"llm.{k}")[5], *["t"] * 30)
        tight = Dispatcher(app, build_router(settings, r, KeyPool.from_settings(settings)), shed_wait=1.0)
        with pytest.raises(budget.Shed) as shed:
            tight({**fields, "groupId": "g3", "reason": "reassess"})
        limiter = KeyLimiter(r, margin=settings.limit_margin)
        key_used = KeyPool.from_settings(settings).get(shed.value.key_id)
        assert shed.value.reason == "saturated"
        queued = sum(int(r.llen(name)) for name in budget.priority_queues(key_used.queue))  # nothing added
        assert queued >= 30
        assert shed.value.expected_wait == pytest.approx((queued + 1) * limiter.interval(key_used))
    finally:
        app.close()


def test_fast_repr_keeps_the_display_text_and_the_callback_has_no_task_sent_event(redis_server):
    app = producer_app(Settings(redis_url=redis_server.url, llm_api_keys=TEST_KEYS))
    try:
        assert isinstance(app.amqp, FastReprAMQP)
        small = [{"cameraId": "c", "features": {"minGap": 0.25}, "memberTrackIds": [1, 2]}]
        assert fast_repr(small, 1024) == repr(small)
        big = [{"description": "x" * 5000}]
        assert len(fast_repr(big, 1024)) < 1200  # saferepr's truncation when it does not fit
        # as Celery calls it: positional arguments, the sent event flag among them
        message = app.amqp.create_task_message("id-1", ASSESS_TASK, small, {}, None, None, None, None, None, 0,
                                               None, None, None, None, None, None, True)
        assert message.headers["argsrepr"] == repr(small) and message.sent_event["args"] == repr(small)
        callback = app.amqp.create_task_message("id-2", CALLBACK_TASK, small, {}, None, None, None, None, None, 0,
                                                None, None, None, None, None, None, True)
        assert callback.sent_event is None and callback.headers["argsrepr"] == repr(small)
    finally:
        app.close()


# --- the assessment is stored where it is made ----------------------------------------------------------------------

def test_the_llm_worker_stores_and_publishes_the_assessment_itself(isolated_redis, base_env, provider, log_dir):
    """Only the keys' queues are consumed (no `results` worker): the client still gets each assessment once,
    the camera's latest is stored, no callback task is sent and Celery keeps no result."""
    r = isolated_redis.client
    env = isolated_redis.env({**base_env, "TC_LLM_BASE_URL": provider["url"]})
    worker = Proc("llm-only", [sys.executable, "-m", "workers", "-Q", "llm.test-a,llm.test-b", "--pool", "threads",
                               "--concurrency", "4", "--hostname", f"llm-only-{uuid.uuid4().hex[:6]}@%h"],
                  env, log_dir)
    settings = Settings(redis_url=isolated_redis.url, llm_api_keys=TEST_KEYS)
    app = producer_app(settings)
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(names.events_channel("inline"))
    try:
        wait_for(lambda: worker.alive() and "ready." in worker.output(), 60, "the LLM worker")
        dispatch = Dispatcher(app, build_router(settings, r, KeyPool.from_settings(settings)))
        fields = {"cameraId": "inline", "groupIndex": 0, "features": {"objectCount": 2, "minGap": 0.3,
                                                                       "classCounts": {"car": 1, "person": 1}},
                  "memberTrackIds": [1, 2], "frameTimestamp": time.time(), "reason": "appeared"}
        task_ids = [dispatch({**fields, "groupId": f"g{i}", "imageKey": store.store_image(r, _jpeg(), 60)})
                    for i in range(3)]
        seen: dict[str, int] = {}

        def delivered() -> bool:
            while (msg := events.get_message(timeout=0.1)) is not None:
                event_type, data = decode(msg["data"].decode())
                if event_type.value == "risk_assessment":
                    seen[data["taskId"]] = seen.get(data["taskId"], 0) + 1
            return set(seen) == set(task_ids)

        wait_for(delivered, 60, lambda: f"three risk_assessment events, got {seen}; worker: {worker.output()[-800:]}")
        wait_for(lambda: r.hlen("unacked") == 0, 30, "the tasks to be acknowledged")
        delivered()
        assert seen == dict.fromkeys(task_ids, 1)
        assert json.loads(r.get(names.latest_key("inline")))["taskId"] in task_ids
        assert r.llen(names.RESULTS_QUEUE) == 0  # no callback sent
        assert not any(r.exists(f"celery-task-meta-{task_id}") for task_id in task_ids)  # ignore_result
    finally:
        events.close()
        app.close()
        worker.stop()


# --- the callback: once, cheap, monitored --------------------------------------------------------------------------

@pytest.fixture()
def results_worker(isolated_redis: IsolatedRedis, base_env: dict[str, str], log_dir) -> Iterator[Proc]:
    env = isolated_redis.env(base_env)
    proc = Proc("results-loadpath", [sys.executable, "-m", "workers", "-Q", names.RESULTS_QUEUE, "--pool", "threads",
                                     "--concurrency", "4", "--hostname", f"loadpath-{uuid.uuid4().hex[:6]}@%h"],
                env, log_dir)
    try:
        wait_for(lambda: proc.alive() and "ready." in proc.output(), 60, "the results worker")
        yield proc
    finally:
        proc.stop()


def _verdict(task_id: str, camera: str = "lp-cam", **changes: Any) -> dict[str, Any]:
    return Assessment(cameraId=camera, groupId="g1", groupIndex=0, taskId=task_id, riskLevel="low",
                      riskTypes=["close"], description="naïve cyclist « close »", confidence=0.7,
                      dangerObjectIds=[3], llmLatency=0.2, llmModel="m", apiKeyId="test-a",
                      frameTimestamp=time.time(), memberTrackIds=[3, 4], **changes).to_wire()


def test_the_callback_stores_and_publishes_once_and_keeps_no_celery_result(isolated_redis, results_worker):
    r = isolated_redis.client
    app = producer_app(Settings(redis_url=isolated_redis.url, llm_api_keys=TEST_KEYS))
    events = r.pubsub(ignore_subscribe_messages=True)
    events.subscribe(names.events_channel("lp-cam"))
    try:
        task_id = f"once-{uuid.uuid4().hex[:8]}"
        verdict = _verdict(task_id)
        sent = [app.send_task(CALLBACK_TASK, args=[verdict], queue=names.RESULTS_QUEUE).id for _ in range(3)]
        seen: list[str] = []

        def delivered() -> bool:
            while (msg := events.get_message(timeout=0.1)) is not None:
                seen.append(msg["data"].decode())
            return bool(seen)

        wait_for(delivered, 30, "the risk_assessment event")
        wait_for(lambda: all(r.hlen("unacked") == 0 and not r.llen(q) for q in [names.RESULTS_QUEUE]), 30,
                 "the three deliveries to be consumed")
        time.sleep(0.3)
        delivered()
        assert len(seen) == 1, seen  # once per task id
        event_type, data = decode(seen[0])
        assert event_type.value == "risk_assessment"
        stored = json.loads(r.get(names.latest_key("lp-cam")))
        assert stored == data  # the event carries exactly the stored JSON (serialised once)
        assert Assessment.model_validate(data).assessedAt is not None
        assert {k: v for k, v in data.items() if k != "assessedAt"} == {
            k: v for k, v in verdict.items() if v is not None and v != []} | {"riskTypes": ["close"]}
        assert store.alert_history(r, "lp-cam")[0][0]["taskId"] == task_id
        assert r.xlen(names.alerts_key("lp-cam")) == 1
        assert not any(r.exists(f"celery-task-meta-{celery_id}") for celery_id in sent)  # ignore_result
    finally:
        events.close()
        app.close()


def drain(pubsub: Any, quiet: float = 0.3) -> int:
    """Read a pub/sub connection until it has been quiet for `quiet` seconds; how many messages it read."""
    count, last = 0, time.monotonic()
    while time.monotonic() - last < quiet:
        if pubsub.get_message(timeout=0.05) is not None:
            count, last = count + 1, time.monotonic()
    return count


def test_task_events_reach_a_monitor_batched_and_the_callback_sends_no_task_sent(isolated_redis, results_worker):
    """What Flower reads: received, started and succeeded for every callback, within the flush interval, in far
    fewer messages than events; and no task-sent for the callback (its received follows at once)."""
    r = isolated_redis.client
    app = producer_app(Settings(redis_url=isolated_redis.url, llm_api_keys=TEST_KEYS))
    raw = r.pubsub(ignore_subscribe_messages=True)
    raw.psubscribe("*celeryev/task.*")
    got: list[dict[str, Any]] = []
    receiver_app = Celery("monitor", broker=isolated_redis.url)
    stop = threading.Event()

    def monitor() -> None:
        with receiver_app.connection_for_read() as conn:
            recv = receiver_app.events.Receiver(conn, handlers={"*": got.append})
            while not stop.is_set():
                try:
                    recv.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    pass

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    try:
        def send(n: int) -> list[str]:
            return [app.send_task(CALLBACK_TASK, args=[_verdict(f"ev-{uuid.uuid4().hex[:8]}", camera="ev-cam")],
                                  queue=names.RESULTS_QUEUE).id for _ in range(n)]

        def complete(ids: list[str]) -> bool:
            kinds = {(e.get("uuid"), e["type"]) for e in got}
            return all((i, t) in kinds for i in ids for t in ("task-received", "task-started", "task-succeeded"))

        # the monitor's queue binds some time after it starts: probe until a callback's events all arrive
        deadline = time.monotonic() + 30
        while True:
            probe = send(1)
            try:
                wait_for(lambda probe=probe: complete(probe), 3, "a probe callback's events")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.5)
        drain(raw)
        ids = send(20)
        wait_for(lambda: complete(ids), 30, lambda: f"every callback's events; got {len(got)}")
        assert not [e for e in got if e["type"] == "task-sent" and e.get("uuid") in ids]
        messages = drain(raw)
        # published at most every EVENT_FLUSH_INTERVAL, or when 24 wait (Celery's own flush, which two threads
        # may both run): without the batching each turn of the event loop published (27 messages for these 60
        # events when measured, where this bound was 8)
        ours = [e["timestamp"] for e in got if e.get("uuid") in ids]
        bound = math.ceil((max(ours) - min(ours)) / EVENT_FLUSH_INTERVAL) + 2 * (len(ours) // 24) + 2
        assert 0 < messages <= bound, (messages, bound)
    finally:
        stop.set()
        thread.join(5)
        raw.close()
        app.close()
        receiver_app.close()


# --- the LLM client: one keep-alive pool per process ---------------------------------------------------------------

def test_the_client_reuses_keep_alive_connections_across_threads_and_reports_the_send_time():
    from traffic_celery.fake_provider.server import ProviderServer, ProviderState
    from traffic_celery.llm import schema

    secrets = dict(pair.split("=", 1) for pair in TEST_KEYS.split(","))
    provider = ProviderServer(("127.0.0.1", 0), ProviderState({s: (k, 1000.0) for k, s in secrets.items()},
                                                              latency=0.02))
    threading.Thread(target=provider.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    k = ApiKey(id="test-a", secret=secrets["test-a"], qps=1000)
    messages = schema.build_messages(0, [1, 2], {"objectCount": 2, "classCounts": {"car": 1, "person": 1},
                                                 "minGap": 0.3}, _jpeg())
    call = llm_client.prepare(k, provider.url, "qwen-vl-plus", messages)
    results: list[tuple[float, float, float]] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(6):
            sent: list[float] = []
            start = time.time()
            done = llm_client.send(call, 10, on_sent=sent.append)
            assert schema.parse_reply(done.text, 0).riskLevel in ("none", "low", "medium", "high")
            with lock:
                results.append((start, sent[0], time.time()))

    try:
        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 24
        assert all(start <= sent <= end for start, sent, end in results)
        assert len(provider.accepted) <= 4  # 24 calls on at most one connection per concurrent caller
    finally:
        provider.shutdown()
        provider.server_close()


def test_the_client_says_what_failed():
    k = ApiKey(id="test-a", secret="sk-test-a-secret-000000")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = llm_client.prepare(k, f"http://127.0.0.1:{port}/v1", "m", [])
    with pytest.raises(llm_client.ProviderFailed, match="cannot reach the LLM provider"):
        llm_client.send(refused, 2)
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        hung = llm_client.prepare(k, f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "m", [])
        started = time.monotonic()
        with pytest.raises(llm_client.ProviderFailed, match="timed out after 1s") as failed:
            llm_client.send(hung, 1)
        assert 0.9 <= time.monotonic() - started < 5
        assert k.secret not in str(failed.value)
