"""The Prometheus instruments every process updates, in prometheus-client's multiprocess mode.

Every process (web tier, capture node, Celery worker and its prefork children) writes its samples to files in
one folder, and whoever is scraped sums them (:func:`registry`): the web tier's `/metrics`, or a worker's or
capture node's own exporter on `TC_METRICS_PORT` (:func:`serve`). The folder is `TC_METRICS_DIR` when set (every
process of the machine: the launcher sets and empties it), else a private one per process tree (a worker and its
children), removed at exit.

:func:`configure` must run before the first instrument is touched; the entry points call it first thing.
:func:`get` then returns the instruments (made on first use, so they always land in the configured folder).
Figures that live in Redis (per-key state, the scheduler's counts) are added at scrape time by the collectors of
:mod:`traffic_celery.telemetry.collectors`. Labels are bounded: camera id, COCO class, queue, task, key id, model,
risk level, shed reason.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.registry import Collector

from traffic_celery.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_state: dict[str, Path] = {}

FAST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)


def configure(settings: Settings) -> Path:
    """Switch this process to multiprocess mode on its metrics folder (idempotent); returns the folder."""
    if "dir" in _state:
        return _state["dir"]
    if settings.metrics_dir is not None:
        folder = Path(settings.metrics_dir)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="tc-metrics-"))
        owner = os.getpid()

        def remove_folder() -> None:  # in the process that made it only, not in a forked child
            if os.getpid() == owner:
                shutil.rmtree(folder, ignore_errors=True)

        atexit.register(remove_folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # prometheus-client reads its folder from here
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # prometheus-client: untyped
    _state["dir"] = folder
    atexit.register(process_exited)
    return folder


def process_exited(pid: int | None = None) -> None:
    """Drop the live gauges of a process that ended (its counters stay: they are totals)."""
    if "dir" in _state:
        # prometheus-client's multiprocess helpers are untyped
        multiprocess.mark_process_dead(pid or os.getpid(), str(_state["dir"]))  # type: ignore[no-untyped-call]


def registry(*collectors: Collector) -> CollectorRegistry:
    """What a scrape shows: every process's instruments from the folder, plus `collectors` (read at scrape)."""
    reg = CollectorRegistry()
    folder = str(_state.get("dir") or configure(get_settings()))
    multiprocess.MultiProcessCollector(reg, folder)  # type: ignore[no-untyped-call]  # prometheus-client: untyped
    for collector in collectors:
        reg.register(collector)
    return reg


def serve(settings: Settings, *collectors: Collector) -> None:
    """Serve /metrics on `TC_METRICS_PORT` (workers, capture nodes); nothing when it is 0."""
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=registry(*collectors))
        logger.info("metrics on :%d/metrics", settings.metrics_port)


class Instruments:
    def __init__(self) -> None:
        # capture and detection
        self.frames_analysed = Counter("tc_frames_analysed", "frames run through detection", ["camera"])
        self.detection_seconds = Histogram("tc_detection_duration_seconds", "detection and tracking of one frame",
                                           buckets=FAST_BUCKETS)
        self.turn_wait_seconds = Histogram("tc_capture_turn_wait_seconds", "time a frame waited for its capture "
                                           "process's turn (capture.turns): near a full core it nears the frame "
                                           "interval", buckets=FAST_BUCKETS)
        self.objects = Counter("tc_objects_detected", "objects detected in analysed frames", ["class"])
        self.groups = Counter("tc_traffic_groups", "traffic groups found in analysed frames", ["camera"])
        self.camera_reconnects = Counter("tc_camera_reconnects", "reconnect attempts after a lost stream",
                                         ["camera"])
        # Celery tasks (workers/task_metrics.py)
        self.tasks_enqueued = Counter("tc_tasks_enqueued", "tasks published (first sends, retries, callbacks)",
                                      ["queue", "task"])
        self.tasks_started = Counter("tc_tasks_started", "tasks a worker started", ["queue", "task"])
        self.tasks_succeeded = Counter("tc_tasks_succeeded", "tasks that returned", ["queue", "task"])
        self.tasks_failed = Counter("tc_tasks_failed", "tasks that failed for good", ["queue", "task"])
        self.tasks_retried = Counter("tc_tasks_retried", "tasks retried or moved to another key's queue",
                                     ["queue", "task"])
        self.task_seconds = Histogram("tc_task_duration_seconds", "task run time in the worker", ["task"],
                                      buckets=SLOW_BUCKETS)
        # the LLM
        self.llm_seconds = Histogram("tc_llm_request_duration_seconds", "chat-completions calls that answered",
                                     ["key", "model"], buckets=SLOW_BUCKETS)
        self.llm_tokens = Counter("tc_llm_tokens", "tokens the provider counted", ["key", "model", "kind"])
        # results and viewers
        self.assessments = Counter("tc_assessments", "assessments stored and sent to clients", ["risk_level"])
        self.assessment_latency = Histogram("tc_assessment_latency_seconds", "from the frame to the stored "
                                            "assessment", buckets=SLOW_BUCKETS)
        self.assessments_shed = Counter("tc_assessments_shed", "assessments given up by the LLM budget "
                                        "(traffic_celery.llm.budget): saturated at dispatch, stale in the worker",
                                        ["reason"])
        # telling people (traffic_celery.notify, workers.webhooks)
        self.mqtt_messages = Counter("tc_mqtt_messages", "MQTT messages handed to the broker connection: sent, "
                                     "queued while the broker is away, dropped beyond TC_MQTT_QUEUE", ["outcome"])
        self.webhook_deliveries = Counter("tc_webhook_deliveries", "webhook delivery attempts by target and "
                                          "outcome (delivered, retried, dead)", ["target", "outcome"])
        self.ws_clients = Gauge("tc_websocket_clients", "open WebSocket clients", multiprocess_mode="livesum")
        self.ws_frames_dropped = Counter("tc_websocket_frames_dropped", "frames replaced by a newer one before a "
                                         "slow client took them")
        self.ws_events_dropped = Counter("tc_websocket_events_dropped", "events dropped for a client that does "
                                         "not read")


_made: list[Instruments] = []
_made_lock = threading.Lock()


def get() -> Instruments:
    """The process's instruments (configuring multiprocess mode from the settings if nobody did). Made once
    under a lock: capture loops that start together would otherwise each make them, and all but the first would
    fail on prometheus-client's duplicate registration."""
    if not _made:
        with _made_lock:
            if not _made:
                if "dir" not in _state:
                    configure(get_settings())
                _made.append(Instruments())
    return _made[0]
