"""A capture node: runs the capture loops of the cameras it holds in the registry, one loop per camera in the
whole deployment, however many viewers or web processes there are.

Every node (the web process by default, and any `traffic-celery capture` process on any machine) runs a
supervisor thread that, every `capture_heartbeat` seconds and at once when the registry changes
(`tc:cameras:control`):

1. stops the loops of cameras that left the registry, were stopped (`enabled` false) or changed source, and
   lets go of cameras whose source is over for good (a file that ended, a URL that never opened: they are
   marked stopped, and keep their last status and message);
2. renews its leases (`tc:camera:<id>:owner`, TTL `capture_lease_ttl`); a camera whose lease another node holds
   is stopped here;
3. claims cameras nobody holds (a new camera, or one whose node died and let its lease expire), and starts their
   loops, while it holds fewer than its fair share: ceil(enabled cameras / live nodes), at most
   `capture_max_cameras`. Live nodes are counted from their heartbeats (`tc:capture:nodes`, renewed every round
   with the leases' TTL); a node holding more than its share (a node joined) hands its newest cameras over, so
   the cameras spread evenly over the nodes (the processes of `traffic-celery capture`, one per core).

The node's loops take turns to analyse (:mod:`traffic_celery.capture.turns`): one frame at a time, the most overdue
camera first, so the cameras of a process share its core evenly.

A loop that failed in this process (not its source: the model, say) is let go and may be claimed again after
`RETRY_FAILED_AFTER` seconds, here or on another node. During a Redis outage the loops keep running; the leases
are taken again (or found lost) when Redis answers.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from traffic_celery import names
from traffic_celery.broker.config import producer_app
from traffic_celery.capture.loop import CaptureLoop, Enqueue
from traffic_celery.capture.sources import configure_ffmpeg
from traffic_celery.capture.turns import Turns
from traffic_celery.history.store import History
from traffic_celery.llm.dispatch import Dispatcher, sent_events
from traffic_celery.llm.keys import KeyPool
from traffic_celery.llm.router import Router, build_router
from traffic_celery.protocol import CameraState
from traffic_celery.redis_conn import listen
from traffic_celery.registry import CameraConfig, CameraRegistry
from traffic_celery.safety.recorder import Recorder
from traffic_celery.settings import Settings
from traffic_celery.vision.detection import Detector, shared_detector

logger = logging.getLogger(__name__)

RETRY_FAILED_AFTER = 10.0


def make_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"


class CaptureNode:
    def __init__(self, settings: Settings, r: redis.Redis, detector: Callable[[], Detector], enqueue: Enqueue,
                 node_id: str | None = None, recorder: Recorder | None = None):
        self._settings, self._redis, self._detector, self._enqueue = settings, r, detector, enqueue
        self.recorder = recorder
        self.node_id = node_id or make_node_id()
        self.registry = CameraRegistry(r)
        self._loops: dict[str, CaptureLoop] = {}
        self.turns = Turns()  # the loops' analyses, one at a time (TC_CAPTURE_TURNS)
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._supervise, name="capture-node", daemon=True),
                         threading.Thread(target=self._listen, name="capture-node-control", daemon=True)]
        self._redis_down_logged = False

    def start(self) -> CaptureNode:
        configure_ffmpeg(self._settings.rtsp_transport)
        if self.recorder is not None:
            self.recorder.start()
        for thread in self._threads:
            thread.start()
        logger.info("capture node %s started (at most %d cameras)", self.node_id, self._settings.capture_max_cameras)
        return self

    def poke(self) -> None:
        """Run a round now (the registry changed)."""
        self._wake.set()

    def loops(self) -> dict[str, CaptureLoop]:
        with self._lock:
            return dict(self._loops)

    # --- threads --------------------------------------------------------------------------------------------
    def _listen(self) -> None:
        listen(self._settings, self._stop, lambda channel, data: self.poke(), channels=[names.CAMERAS_CONTROL],
               on_ready=self.poke, name=f"capture node {self.node_id}")

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
                self._redis_down_logged = False
            except redis.RedisError as exc:
                if not self._redis_down_logged:
                    logger.warning("capture node %s cannot reach Redis (%s); its cameras keep running and it "
                                   "retries every %.1fs", self.node_id, exc, self._settings.capture_heartbeat)
                    self._redis_down_logged = True
            except Exception:
                logger.exception("capture node %s: supervisor round failed", self.node_id)
            self._wake.wait(self._settings.capture_heartbeat)

    # --- one round ------------------------------------------------------------------------------------------
    def fair_share(self, configs: dict[str, CameraConfig]) -> tuple[int, int]:
        """(cameras this node may hold, live nodes): ceil(enabled cameras / live nodes), capped by
        `capture_max_cameras`; renews this node's heartbeat."""
        live = self.registry.heartbeat(self.node_id, self._settings.capture_lease_ttl)
        enabled = sum(1 for config in configs.values() if config.enabled)
        return min(self._settings.capture_max_cameras, math.ceil(enabled / max(1, live))), live

    def tick(self) -> None:
        configs = self.registry.all()
        now = time.monotonic()
        share, live = self.fair_share(configs)
        handed_over = False
        with self._lock:
            for cid, loop in list(self._loops.items()):
                config = configs.get(cid)
                if config is None:
                    self._let_go(cid, "removed from the registry")
                    self.registry.forget_status(cid)
                elif not config.enabled:
                    self._let_go(cid, "stopped")
                elif not config.same_source(loop.config):
                    self._let_go(cid, "its source changed", release=False)
                    self._start_loop(config)  # the lease is still ours
                elif config != loop.config and not loop.done.is_set():
                    loop.reconfigure(config)  # zones, calibration, context: live
                elif loop.done.is_set():
                    if loop.ended is not None:  # over for good: disabled BEFORE the lease goes, so no other
                        self.registry.disable_if(loop.config)  # node can claim and restart it in between
                    else:
                        self._retry_at[cid] = now + RETRY_FAILED_AFTER
                    self._let_go(cid, loop.ended or loop.failed or "its loop ended")
            for cid, held in self.registry.renew(list(self._loops), self.node_id,
                                                 self._settings.capture_lease_ttl).items():
                if not held:
                    self._let_go(cid, "another capture node holds it", release=False)
            for cid in list(self._loops)[share:]:  # the newest beyond the share go to the other nodes
                self._let_go(cid, f"fair share: {share} cameras per node with {live} nodes")
                handed_over = True
            for cid, config in sorted(configs.items()):
                if not config.enabled or cid in self._loops or self._retry_at.get(cid, 0.0) > now:
                    continue
                if len(self._loops) >= share:
                    break
                if self.registry.claim(cid, self.node_id, self._settings.capture_lease_ttl):
                    self._start_loop(config)
            self._retry_at = {cid: t for cid, t in self._retry_at.items() if t > now and cid in configs}
            counters = {cid: self._counters(loop) for cid, loop in self._loops.items()}
        self.registry.set_counters(counters)
        if handed_over:
            self.registry.notify()  # the other nodes claim them now, not at their next heartbeat

    @staticmethod
    def _counters(loop: CaptureLoop) -> dict[str, Any]:
        return {"framesAnalysed": loop.frames_analysed, "tasksEnqueued": loop.tasks_enqueued,
                "reconnects": loop.source.reconnects if loop.source else 0,
                "countedAt": round(time.time(), 3)}  # when: a frame rate from two readings is exact

    def _start_loop(self, config: CameraConfig) -> None:
        cid = config.camera_id

        def report(state: CameraState, message: str) -> None:
            if self._loops.get(cid) is loop:  # only the camera's current loop here speaks for it
                self.registry.set_status(cid, state, message, self.node_id)

        loop = CaptureLoop(config, self._settings, self._redis, self._detector, self._enqueue, report=report,
                           on_online=lambda: self.registry.mark_verified(config), recorder=self.recorder,
                           turns=self.turns if self._settings.capture_turns else None)
        self._loops[cid] = loop  # before it starts: its first report must find it here
        loop.start()
        logger.info("capture node %s runs camera %s (%s)", self.node_id, cid, config.url)

    def _let_go(self, camera_id: str, why: str, release: bool = True) -> None:
        loop = self._loops.pop(camera_id)
        loop.stop_async()
        if release:
            self.registry.release(camera_id, self.node_id)
        logger.info("capture node %s let camera %s go: %s", self.node_id, camera_id, why)

    def stop(self) -> None:
        """Stop every loop and hand the cameras over (leases released, other nodes told); the registry stays."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout=5)
        with self._lock:
            loops, self._loops = dict(self._loops), {}
        for loop in loops.values():
            loop.stop_async()
        for cid, loop in loops.items():
            loop.stop()
            try:
                self.registry.release(cid, self.node_id)
                self.registry.set_status(cid, CameraState.RECONNECTING, f"camera {cid}: capture node {self.node_id} "
                                         "stopped; the next capture node to start takes it over", self.node_id)
            except redis.RedisError as exc:
                logger.warning("could not hand camera %s over (%s); its lease expires by itself", cid, exc)
        try:
            self.registry.node_gone(self.node_id)
            if loops:
                self.registry.notify()
        except redis.RedisError:
            pass
        if self.recorder is not None:
            self.recorder.join(timeout=10)
            self.recorder.stop()
        logger.info("capture node %s stopped %d capture loops", self.node_id, len(loops))


def build_capture_node(settings: Settings, r: redis.Redis, router: Router | None = None) -> CaptureNode:
    """The capture node of the web tier and of `traffic-celery capture` alike: its loops detect with the process's
    shared model (loaded on first use) and enqueue through the router on a producer Celery app. Nothing starts
    until :meth:`CaptureNode.start`."""
    celery = producer_app(settings)
    router = router or build_router(settings, r, KeyPool.from_settings(settings))
    dispatcher = Dispatcher(celery, router, sent_events(celery, settings))
    return CaptureNode(settings, r, lambda: shared_detector(settings), dispatcher,
                       recorder=Recorder(History.from_settings(settings), r))
