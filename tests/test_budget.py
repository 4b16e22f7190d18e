"""The LLM budget (`traffic_celery.llm.budget`): the priority table and the shed policy, then a saturated key on
real parts (Redis broker with priorities, a Celery worker process of concurrency 1, the fake provider): severe
jobs overtake the queued re-assessments, and re-assessments are shed at dispatch (saturated) and in the worker
(stale), counted in the stats and in Prometheus."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np
import pytest

from traffic_celery import names, store
from traffic_celery.llm import budget
from traffic_celery.protocol import Job

from .conftest import Proc, scrape, total, wait_for

# --- unit: the priority table and the shed policy -------------------------------------------------------------


def conflict(severity: str | None, ttc: float | None = None, pet: float | None = None) -> dict[str, Any]:
    return {"conflictType": "vehicle-pedestrian", "trackIds": [1, 2], "classes": ["car", "person"], "ttc": ttc,
            "pet": pet, "distance": 1.0, "minDistance": 0.8, "units": "relative", "severity": severity}


def job(reason: str, pair: dict[str, Any] | None = None, incident: str | None = None, **extra: Any) -> Job:
    return Job.model_validate({
        "cameraId": "c", "groupId": "g", "groupIndex": 0, "imageKey": "tc:img:x", "memberTrackIds": [1, 2],
        "features": {"objectCount": 2, "classCounts": {"car": 1, "person": 1}, "minGap": 0.2, "conflict": pair},
        "frameTimestamp": 1.0, "reason": reason, "incidentId": incident, **extra})


@pytest.mark.parametrize(("reason", "pair", "incident", "expected"), [
    ("near_miss", conflict("high", ttc=0.6), None, 0),
    ("worsened", conflict("high", pet=0.3), "inc-1", 0),
    ("near_miss", conflict("medium", ttc=1.1), None, 1),       # the worse half of the medium TTC band
    ("near_miss", conflict("medium", ttc=1.4), None, 2),
    ("worsened", conflict("medium", pet=0.6), None, 1),        # no TTC: the PET decides
    ("worsened", conflict("medium", pet=0.9), None, 2),
    ("near_miss", conflict("low", ttc=2.5), None, 3),
    ("near_miss", None, None, 3),
    ("worsened", conflict(None), None, 3),
    ("worsened", None, "inc-1", 3),                            # an incident getting worse
    ("worsened", None, None, 4),
    ("appeared", None, "inc-1", 4),
    ("appeared", None, None, 5),
    ("members_changed", None, None, 5),
    ("members_changed", conflict("high", ttc=0.5), None, 5),   # severity ranks only a changed situation
    ("something_new", None, None, 5),
    ("reassess", None, None, 9),
    ("reassess", conflict("high", ttc=0.5), "inc-1", 9),       # periodic: always last, whatever it shows
])
def test_priority_of(reason, pair, incident, expected):
    assert budget.priority_of(job(reason, pair, incident)) == expected
    assert budget.priority_of(job(reason, pair, incident).to_wire()) == expected  # the wire form too


@pytest.mark.parametrize(("reason", "wait", "expected"), [
    ("reassess", 6.0, "saturated"),
    ("reassess", 5.0, None),          # at the limit: still sent
    ("reassess", 0.5, None),
    ("reassess", None, None),         # the wait is unknown (Kafka): never shed at dispatch
    ("near_miss", 60.0, None),        # only periodic re-assessments are ever shed
    ("worsened", 60.0, None),
    ("appeared", 60.0, None),
    ("members_changed", 60.0, None),
])
def test_should_shed(reason, wait, expected):
    assert budget.should_shed(job(reason), wait, limit=5.0) == expected


def test_is_stale():
    assert budget.is_stale(job("reassess", enqueuedAt=100.0), now=106.0, limit=5.0) == "stale"
    assert budget.is_stale(job("reassess", enqueuedAt=100.0), now=104.0, limit=5.0) is None
    assert budget.is_stale(job("near_miss", enqueuedAt=100.0), now=1000.0, limit=5.0) is None
    assert budget.is_stale(job("reassess"), now=1000.0, limit=5.0) is None  # never enqueued: no wait to judge


def test_celery_priority_per_transport_and_queue_names():
    assert [budget.celery_priority(p, "tcredis") for p in (0, 4, 9)] == [0, 4, 9]   # kombu Redis: 0 highest
    assert budget.celery_priority(0, "redis") == 0 and budget.celery_priority(0, "rediss") == 0
    assert [budget.celery_priority(p, "pyamqp") for p in (0, 4, 9)] == [9, 5, 0]    # AMQP: 9 highest
    assert budget.celery_priority(0, "confluentkafka") is None                      # Kafka: none
    assert budget.priority_queues("llm.a")[:2] == ["llm.a", "llm.a\x06\x161"] and len(budget.priority_queues("q")) == 10
    assert budget.expected_wait(0, 0.5) == 0.5 and budget.expected_wait(9, 0.5) == 5.0


def test_broker_config_has_priorities_and_keeps_its_options(settings):
    from traffic_celery.broker.config import config_for

    options = config_for(settings)["broker_transport_options"]
    assert options["priority_steps"] == list(range(10)) and options["sep"] == budget.PRIORITY_SEP
    assert options["queue_order_strategy"] == "round_robin"
    assert {"visibility_timeout", "unacked_restore_interval", "unacked_restore_throttle"} <= set(options)


# --- a saturated key on real parts ----------------------------------------------------------------------------

SECRET = "sk-budget-test-secret-9f3c-4711"
CAMERA = "budget"


def _shed_samples(samples: list[tuple[str, dict[str, str], float]], reason: str) -> float:
    return total(samples, "tc_assessments_shed_total", reason=reason)


def _local_shed(reason: str) -> float:
    """This process's `tc_assessments_shed_total{reason}` (the dispatcher sheds here)."""
    from traffic_celery.telemetry import instruments

    instruments.get()  # configured (multiprocess mode on its folder) before the folder is read
    return sum(s.value for family in instruments.registry().collect() for s in family.samples
               if s.name == "tc_assessments_shed_total" and s.labels.get("reason") == reason)


def test_severe_jobs_overtake_queued_reassessments_and_reassessments_are_shed(base_env, log_dir, isolated_redis,
                                                                             tmp_path):
    from traffic_celery.broker.config import producer_app
    from traffic_celery.embedded_redis import free_port
    from traffic_celery.fake_provider.server import ProviderServer, ProviderState
    from traffic_celery.llm.dispatch import ASSESS_TASK, CALLBACK_TASK, Dispatcher
    from traffic_celery.llm.keys import KeyPool
    from traffic_celery.llm.router import build_router
    from traffic_celery.settings import Settings
    from traffic_celery.telemetry.collectors import assessment_stats

    r = isolated_redis.client
    # the provider would allow 50/s: the key's own limit (2/s, one call at a time) is what saturates the pool
    provider = ProviderServer(("127.0.0.1", 0), ProviderState({SECRET: ("a", 50.0)}, latency=0.05))
    threading.Thread(target=provider.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(json.dumps({"keys": [{"id": "a", "secret": SECRET, "qps": 2, "rpm": 10_000,
                                               "max_in_flight": 1}]}))
    metrics_port = free_port()
    env = isolated_redis.env({**base_env, "TC_LLM_KEYS_FILE": str(keys_file), "TC_LLM_BASE_URL": provider.url,
                              "TC_BUDGET_SHED_WAIT": "60", "TC_METRICS_DIR": str(tmp_path / "metrics")})
    env.pop("TC_LLM_API_KEYS", None)
    procs = [Proc("budget-worker", [sys.executable, "-m", "workers", "--hostname", "budget@%h", "-Q", "llm.a",
                                    "--concurrency", "1"], {**env, "TC_METRICS_PORT": str(metrics_port)}, log_dir),
             Proc("budget-results", [sys.executable, "-m", "workers", "--hostname", "budget-results@%h", "-Q",
                                     names.RESULTS_QUEUE, "--pool", "threads", "--concurrency", "2"], env, log_dir)]
    events = r.pubsub(ignore_subscribe_messages=True)
    try:
        for proc in procs:
            wait_for(lambda p=proc: p.alive() and "ready." in p.output(), 90, f"{proc.name} to be ready")
        events.subscribe(names.events_channel(CAMERA))
        settings = Settings(redis_url=isolated_redis.url, llm_keys_file=keys_file, llm_base_url=provider.url)
        app = producer_app(settings)
        router = build_router(settings, r, KeyPool.from_settings(settings))
        patient = Dispatcher(app, router, shed_wait=60)  # sheds nothing
        tight = Dispatcher(app, router, shed_wait=1.0)   # sheds a reassess job that would wait over 1 s
        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 127, np.uint8))[1].tobytes()
        crops = [store.store_image(r, jpeg, 600) for _ in range(30)]
        saturated_before = _local_shed("saturated")

        def fields(i: int, reason: str, pair: dict[str, Any] | None = None) -> dict[str, Any]:
            return {"cameraId": CAMERA, "groupId": f"g{i}", "groupIndex": 0, "imageKey": crops[i],
                    "features": {"objectCount": 2, "classCounts": {"car": 1, "person": 1}, "minGap": 0.2,
                                 "pedestrianVehicleGap": 0.2, "conflict": pair},
                    "memberTrackIds": [1, 2], "frameTimestamp": time.time(), "reason": reason}

        # a re-assessment that has already waited 120 s (its enqueuedAt says so) reaches the worker: shed, stale
        stale_job = Job.model_validate(fields(29, "reassess")).moved(keyId="a", enqueuedAt=time.time() - 120,
                                                                     priority=9)
        stale_id = app.send_task(ASSESS_TASK, args=[stale_job.to_wire()], queue="llm.a", priority=9,
                                 link=app.signature(CALLBACK_TASK, queue=names.RESULTS_QUEUE)).id
        reassess = [patient(fields(i, "reassess")) for i in range(20)]
        severe = [patient(fields(20 + i, "near_miss", conflict("high", ttc=0.5))) for i in range(3)]
        # the key now has ~20 calls queued (~10 s at 2/s): reassess jobs are shed, a new group is not
        shed = []
        for i in range(4):
            with pytest.raises(budget.Shed) as caught:
                tight(fields(23 + i, "reassess"))
            shed.append(caught.value)
        appeared = tight(fields(27, "appeared"))
        assert {s.reason for s in shed} == {"saturated"} and all(s.expected_wait > 1.0 for s in shed), shed

        expected = set(reassess) | set(severe) | {appeared}
        arrived: list[dict[str, Any]] = []

        def all_assessed() -> bool:
            while (msg := events.get_message(timeout=0.2)) is not None:
                event = json.loads(msg["data"])
                if event["type"] == "risk_assessment":
                    arrived.append(event["data"])
            return {a["taskId"] for a in arrived} >= expected

        wait_for(all_assessed, 180, lambda: f"{len(expected)} assessments; got {len(arrived)}", interval=0)
        order = [a["taskId"] for a in arrived]
        assert stale_id not in order and len(order) == len(expected), order  # each once, none for the shed job
        position = {task_id: order.index(task_id) for task_id in expected}
        later = {task_id: sum(position[re] > position[task_id] for re in reassess) for task_id in severe}
        print(f"arrival positions: severe {[position[t] for t in severe]}, appeared {position[appeared]}, "
              f"reassess {sorted(position[t] for t in reassess)}; reassess after each severe: {later}")
        assert all(n >= 15 for n in later.values()), (later, order)
        assert position[appeared] < max(position[t] for t in reassess)  # priority 5 passes the priority-9 ones

        # counted: in the stats (what /api/assessments/stats returns) and in Prometheus (the dispatcher's process
        # for saturated, the worker's exporter for stale); nothing of the shed jobs reached the provider
        stats = wait_for(lambda: (s := assessment_stats(r))["shed"]["stale"] == 1 and s, 30,
                         lambda: f"the stale shed counted; stats {assessment_stats(r)}")
        assert stats["shed"] == {"saturated": 4, "stale": 1} and stats["shedTotal"] == 5, stats
        assert _local_shed("saturated") - saturated_before == 4
        samples = wait_for(lambda: scrape(f"http://127.0.0.1:{metrics_port}"), 30, "the worker's /metrics")
        assert _shed_samples(samples, "stale") == 1, [s for s in samples if "shed" in s[0]]
        assert provider.state.stats()["requests"] == len(expected)
        # the ignored task was acknowledged, not redelivered: no state stored, nothing left unacked or queued
        assert app.AsyncResult(stale_id).state == "PENDING"
        wait_for(lambda: r.hlen("unacked") == 0, 30, lambda: f"no unacked message; {r.hlen('unacked')} left")
        assert sum(r.llen(q) for q in budget.priority_queues("llm.a")) == 0
    finally:
        events.close()
        for proc in reversed(procs):
            proc.stop()
        provider.shutdown()
        provider.server_close()


def test_a_camera_whose_reassessment_is_shed_keeps_running_and_counts_it(isolated_redis):
    """The capture loop with the real dispatcher: a shed re-assessment is counted as shed (not as a call), its crop
    is deleted, nothing is enqueued, and the camera goes on (a shed once failed the camera)."""
    from traffic_celery.broker.config import producer_app
    from traffic_celery.capture.loop import CaptureLoop
    from traffic_celery.llm.dispatch import Dispatcher
    from traffic_celery.llm.keys import KeyPool
    from traffic_celery.llm.router import build_router
    from traffic_celery.registry import CameraConfig
    from traffic_celery.settings import Settings
    from traffic_celery.telemetry.collectors import assessment_stats
    from traffic_celery.vision.detection import shared_detector

    from .conftest import ASSETS_BUS

    r = isolated_redis.client
    settings = Settings(redis_url=isolated_redis.url, llm_api_keys="a=sk-test-shed-0000", reassess_interval=60,
                        assess_min_interval=0)
    dispatcher = Dispatcher(producer_app(settings), build_router(settings, r, KeyPool.from_settings(settings)),
                            shed_wait=1e-6)  # any wait is too long: every reassess job is shed
    detector = shared_detector(Settings())
    loop = CaptureLoop(CameraConfig(camera_id="shed-cam", url="0"), settings, r, lambda: detector, dispatcher)
    frame = cv2.imread(str(ASSETS_BUS))
    loop.analyse(frame, detector, ts=1000.0)  # the group appears: sent
    queued = sum(r.llen(q) for q in budget.priority_queues("llm.a"))
    assert queued == 1 and loop.tasks_enqueued == 1
    images = set(r.scan_iter("tc:img:*"))
    loop.analyse(frame, detector, ts=1061.0)  # unchanged for 61 s: a re-assessment, shed
    stats = assessment_stats(r)
    assert stats["shed"]["saturated"] == 1 and stats["calls"]["reassess"] == 0 and stats["calls"]["appeared"] == 1
    assert sum(r.llen(q) for q in budget.priority_queues("llm.a")) == 1 and loop.tasks_enqueued == 1
    assert set(r.scan_iter("tc:img:*")) == images  # the shed job's crop was deleted
    loop.analyse(frame, detector, ts=1062.0)  # not asked again every frame: the next turn is in 60 s
    assert assessment_stats(r)["shed"]["saturated"] == 1
