"""`traffic-celery capture` on every core: a supervisor process that runs `TC_CAPTURE_PROCESSES` capture nodes as
child processes (multiprocessing, spawn), and restarts one that dies.

Why processes: the LiteRT model runs on one thread and the GIL serialises the rest of a capture loop, so one
process uses one core whatever the machine has. Each child is a complete capture node (its own model, leases,
heartbeat); the cameras spread evenly over them by the registry's fair-share rule
(:meth:`~traffic_celery.capture.node.CaptureNode.fair_share`), with no coordination here.

- A child's node id is `<host>:<supervisor pid>:<index>.<child pid>.<random>`, so `GET /api/cameras` shows which
  `traffic-celery capture` (and which of its processes) runs each camera.
- A child that exits while the supervisor runs is restarted after 1 s, doubling up to 30 s while it keeps dying
  within 30 s of its start (a model that cannot load does not spin).
- SIGTERM/SIGINT stop the children (each hands its cameras over) and wait for them; a child whose supervisor died
  (SIGKILL) stops by itself.
- Metrics: the children write to the supervisor's Prometheus folder; only the supervisor serves
  `TC_METRICS_PORT`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from traffic_celery.logs import setup_logging
from traffic_celery.settings import Settings, get_settings
from traffic_celery.telemetry import instruments

logger = logging.getLogger(__name__)

RESTART_FIRST = 1.0
RESTART_MAX = 30.0
STABLE_AFTER = 30.0  # a child that ran this long gets the first restart delay again
STOP_TIMEOUT = 20.0


def run_node(settings: Settings, node_id: str | None = None, stopping: threading.Event | None = None) -> None:
    """One capture node in this process until SIGTERM/SIGINT (or `stopping`): load the model, claim, run."""
    from traffic_celery.capture.node import build_capture_node  # noqa: PLC0415  (imports the model's stack)
    from traffic_celery.redis_conn import connect  # noqa: PLC0415
    from traffic_celery.vision.detection import shared_detector  # noqa: PLC0415

    stopping = stopping or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    shared_detector(settings)  # load before claiming: a claimed camera starts at once
    node = build_capture_node(settings, connect(settings))
    if node_id is not None:
        node.node_id = node_id
    node.start()
    logger.info("capture node %s ready", node.node_id)
    stopping.wait()
    node.stop()


def _child(index: int, supervisor_pid: int) -> None:
    """A child process's entry point (spawned: it imports and reads its settings afresh)."""
    import cv2  # noqa: PLC0415

    settings = get_settings()
    setup_logging(settings, f"capture-{index}")
    instruments.configure(settings)
    cv2.setNumThreads(1)  # one process, one core: OpenCV's own threads would only contend with the siblings
    stopping = threading.Event()
    parent = multiprocessing.parent_process()
    if parent is not None:  # the supervisor was killed: hand the cameras over rather than run unsupervised
        def watch() -> None:
            parent.join()
            stopping.set()

        threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    node_id = f"{socket.gethostname()}:{supervisor_pid}:{index}.{os.getpid()}.{uuid.uuid4().hex[:4]}"
    run_node(settings, node_id, stopping)


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    delay: float = RESTART_FIRST
    restart_at: float = 0.0
    restarts: int = field(default=0)


class Supervisor:
    """`count` capture node processes, kept running until :meth:`stop`."""

    def __init__(self, count: int):
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(count)]
        self._stop = threading.Event()

    @property
    def processes(self) -> list[BaseProcess]:
        return [slot.process for slot in self._slots if slot.process is not None]

    def _spawn(self, slot: _Slot) -> None:
        slot.process = self._context.Process(target=_child, args=(slot.index, os.getpid()),
                                             name=f"capture-{slot.index}", daemon=False)
        slot.process.start()
        slot.started = time.monotonic()
        logger.info("capture process %d started (pid %s)", slot.index, slot.process.pid)

    def start(self) -> Supervisor:
        for slot in self._slots:
            self._spawn(slot)
        return self

    def watch_once(self) -> None:
        """Restart the children that died (after their backoff)."""
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is None or process.is_alive():
                continue
            if slot.restart_at == 0.0:  # just noticed
                if process.pid is not None:
                    instruments.process_exited(process.pid)  # its live gauges go; its counters stay
                slot.delay = RESTART_FIRST if now - slot.started > STABLE_AFTER else \
                    min(RESTART_MAX, slot.delay * 2 if slot.restarts else RESTART_FIRST)
                slot.restart_at = now + slot.delay
                logger.warning("capture process %d (pid %s) exited with code %s; restarting it in %.0fs",
                               slot.index, process.pid, process.exitcode, slot.delay)
            elif now >= slot.restart_at:
                slot.restart_at, slot.restarts = 0.0, slot.restarts + 1
                self._spawn(slot)

    def run(self, stopping: threading.Event, interval: float = 0.5) -> None:
        while not stopping.wait(interval) and not self._stop.is_set():
            self.watch_once()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child (each hands its cameras over), wait, then SIGKILL what is left."""
        self._stop.set()
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("capture process %s did not stop within %.0fs; killing it", process.pid, timeout)
                process.kill()
                process.join(5)


def main(settings: Settings) -> None:
    """`traffic-celery capture`: one node in this process, or a supervisor of `TC_CAPTURE_PROCESSES` of them."""
    count = settings.effective_capture_processes
    folder = instruments.configure(settings)
    if count == 1:
        instruments.serve(settings)
        run_node(settings)
        return
    os.environ["TC_METRICS_DIR"] = str(folder)  # the children write where the supervisor serves from
    instruments.serve(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    supervisor = Supervisor(count).start()
    logger.info("capture supervisor %d runs %d capture node processes (TC_CAPTURE_PROCESSES)", os.getpid(), count)
    try:
        supervisor.run(stopping)
    finally:
        supervisor.stop()
    logger.info("capture supervisor stopped")
