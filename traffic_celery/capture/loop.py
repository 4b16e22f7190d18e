"""One camera's capture loop: take the newest frame, detect and track, group, publish, and enqueue assessments.

The source (:mod:`traffic_celery.capture.sources`) keeps only the newest frame and reconnects by itself; its state
changes go to `report` (the capture node records them and publishes `camera_status`). The loop thread
(:class:`CaptureLoop`) wakes every `frame_interval` seconds (a file at `file_pace=fast`: as soon as the next frame
is there), analyses the newest frame and:

- publishes `detection_result` (with the frame as JPEG/base64) on the camera's channel;
- asks the camera's :class:`~traffic_celery.vision.scheduling.AssessmentScheduler` which groups are due, stores each
  due group's crop in Redis with a TTL and hands a job per group to `enqueue` (which puts `assess_group` on the
  chosen key's queue); calls made and saved are counted in `tc:stats:assess`.

A camera that fails stops only itself, and says why (`camera_status` offline and an `error` event). Redis or
the broker going away is not a camera failure: the loop keeps running, drops the results of the frames it cannot
publish, and resumes with the first frame after they answer.
"""

from __future__ import annotations

import base64
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import redis
from kombu.exceptions import OperationalError
from numpy.typing import NDArray

from traffic_celery import names, store
from traffic_celery.capture.sources import FrameSource, SourceOptions
from traffic_celery.protocol import (
    CameraState,
    ErrorCode,
    ErrorEvent,
    EventType,
    GroupFacts,
    Job,
    StreamStopped,
    encode,
)
from traffic_celery.registry import CameraConfig
from traffic_celery.settings import Settings
from traffic_celery.telemetry import instruments
from traffic_celery.vision.detection import Detector
from traffic_celery.vision.grouping import GroupIds, group_detections
from traffic_celery.vision.motion import Motion
from traffic_celery.vision.scheduling import AssessmentScheduler
from traffic_celery.vision.tracking import Tracker
from traffic_celery.vision.types import FrameAnalysis, TrafficGroup

logger = logging.getLogger(__name__)

Enqueue = Callable[[Job], str]  # job -> task id
Report = Callable[[CameraState, str], None]  # (state, message)


def encode_jpeg(image: NDArray[np.uint8], quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def crop(frame: NDArray[np.uint8], bbox: tuple[float, float, float, float], pad: float = 0.1) -> NDArray[np.uint8]:
    """The group's box with a margin of `pad` times its size, clipped to the frame."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = bbox
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    return frame[max(0, int(y1 - py)):min(h, int(y2 + py) + 1), max(0, int(x1 - px)):min(w, int(x2 + px) + 1)]


class CaptureLoop:
    """The loop thread of one camera. `stop()` ends it; `done` is set when it has ended for any reason, with
    `ended` (the source is over for good: the camera is marked stopped) or `failed` (a fault of this
    process, for example the model: the node may try again) saying why."""

    def __init__(self, config: CameraConfig, settings: Settings, r: redis.Redis,
                 detector: Callable[[], Detector], enqueue: Enqueue, report: Report | None = None,
                 on_online: Callable[[], None] | None = None):
        self.config = config
        self.camera_id = config.camera_id
        self.url = config.url
        self._settings = settings
        self._redis = r
        self._detector = detector
        self._enqueue = enqueue
        self._report = report or (lambda state, message: None)
        self._on_online = on_online or (lambda: None)
        self._stop = threading.Event()
        self.done = threading.Event()
        self.ended: str | None = None
        self.failed: str | None = None
        self.log = logger.getChild(f"camera.{self.camera_id}")
        self.frames_analysed = 0
        self.tasks_enqueued = 0
        self.first_frame_done: float | None = None  # monotonic times the first and last analyses ended
        self.last_frame_done: float | None = None
        self.source: FrameSource | None = None
        self._tracker: Tracker | None = None  # made in the loop's thread (imports ultralytics)
        self._group_ids = GroupIds()
        self._motion = Motion(settings.motion_window)
        self.scheduler = AssessmentScheduler.from_settings(settings)
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.camera_id}", daemon=True)

    def start(self) -> CaptureLoop:
        self._thread.start()
        return self

    def stop_async(self) -> None:
        """Ask the loop to end; it does within a frame (or when a model load or source open returns)."""
        self._stop.set()
        if self.source is not None:
            self.source.request_stop()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _on_state(self, state: CameraState, message: str) -> None:
        if self._stop.is_set():  # a loop being stopped says nothing more: its camera may be stopped or moved
            return
        if state == CameraState.ONLINE:
            self._on_online()
        self._report(state, message)

    def _run(self) -> None:
        source: FrameSource | None = None
        try:
            options = SourceOptions.from_settings(self._settings, retry_unopened=self.config.verified)
            reconnects = instruments.get().camera_reconnects.labels(self.camera_id)
            source = self.source = FrameSource(self.url, options, on_state=self._on_state,
                                               on_reconnect=reconnects.inc).start()
            detector = self._detector()
            self._tracker = Tracker()
            self.log.info("capture started on %s", self.url)
            seq = 0
            next_at = time.monotonic()
            interval = 0.0 if source.fast else self.config.frame_interval or self._settings.frame_interval
            # a file replayed as fast as possible keeps its own timeline, so the scheduler and the motion
            # features see the file's seconds, not how fast this machine analyses it
            replay_start = time.time() if source.fast else None
            redis_down_since: float | None = None
            while not self._stop.is_set():
                frame, seq_now = source.newest(seq, timeout=max(interval * 4, 1.0))
                if frame is None:
                    if self._stop.is_set():
                        break
                    if not source.alive:
                        self.ended = source.ended or "the reader stopped"
                        break
                    continue
                seq = seq_now
                try:
                    self.analyse(frame, detector, None if replay_start is None else replay_start + source.position)
                    if redis_down_since is not None:
                        self.log.info("Redis and the broker answer again after %.1fs; frames flow again",
                                      time.monotonic() - redis_down_since)
                        redis_down_since = None
                except (redis.RedisError, OperationalError) as exc:  # Redis or the broker away: keep the loop
                    if redis_down_since is None:
                        redis_down_since = time.monotonic()
                        self.log.warning("cannot publish or enqueue (%s); this frame's results are dropped and "
                                         "the loop keeps analysing until Redis answers", exc)
                next_at = max(next_at + interval, time.monotonic())
                if self._stop.wait(next_at - time.monotonic()):
                    break
            if self.ended is not None and not self._stop.is_set():
                self._finish_source()
        except Exception as exc:  # one failing camera must stop only itself, and say why
            self.failed = f"camera {self.camera_id} failed: {exc}"
            self.log.warning("%s", self.failed, exc_info=True)
            self._tell(CameraState.OFFLINE, self.failed, ErrorCode.CAMERA_FAILED)
        finally:
            if source is not None:
                source.stop()
            self.done.set()
            self.log.info("capture ended after %d frames, %d tasks", self.frames_analysed, self.tasks_enqueued)

    def _finish_source(self) -> None:
        """The source is over for good: a source that never opened is an error, a file that ended is a stop."""
        assert self.source is not None
        if self.source.frames_read == 0:
            self._tell(CameraState.OFFLINE, f"camera {self.camera_id}: {self.ended}", ErrorCode.CAMERA_FAILED)
        else:
            store.publish(self._redis, self.camera_id, EventType.STREAM_STOPPED,
                          StreamStopped(cameraId=self.camera_id, reason=self.ended or "the source ended"))

    def _tell(self, state: CameraState, message: str, error_code: ErrorCode) -> None:
        try:
            self._report(state, message)
            store.publish(self._redis, self.camera_id, EventType.ERROR,
                          ErrorEvent(code=error_code, message=message, cameraId=self.camera_id))
        except redis.RedisError:
            self.log.exception("cannot report the failure of camera %s", self.camera_id)

    def analyse(self, frame: NDArray[np.uint8], detector: Detector, ts: float | None = None) -> FrameAnalysis:
        """Detect, track, group, publish and enqueue the due groups, for one frame taken at `ts` (now)."""
        started = time.monotonic()
        ts = time.time() if ts is None else ts
        detections = detector.detect(frame, self._tracker)
        detected = time.monotonic()
        self.frames_analysed += 1
        groups = self._group_ids.assign(group_detections(
            detections, self._settings.group_link_factor, self._settings.min_group_size,
            motion=self._motion, ts=ts, pv_link_factor=self._settings.group_pv_link_factor))
        self._count(detections, len(groups), detected - started)
        self._motion.observe(ts, detections)
        analysis = FrameAnalysis(self.camera_id, ts, frame.shape[1], frame.shape[0], detections, groups)
        due = self.scheduler.pending(groups, ts)
        for group, reason in due:
            self._enqueue_group(frame, group, ts, reason)
            self.scheduler.assessed(group, reason, ts)  # only now: a failed enqueue leaves the group due
        analysis.process_time = time.monotonic() - started
        frame_b64 = base64.b64encode(encode_jpeg(frame, self._settings.frame_jpeg_quality)).decode("ascii")
        pipe = self._redis.pipeline(transaction=False)
        pipe.publish(names.events_channel(self.camera_id),
                     encode(EventType.DETECTION_RESULT, analysis.to_event(frame_b64)))
        for _group, reason in due:
            pipe.hincrby(names.ASSESS_STATS, f"calls:{reason}", 1)
        if len(groups) > len(due):
            pipe.hincrby(names.ASSESS_STATS, "saved", len(groups) - len(due))
        pipe.execute()
        self.last_frame_done = time.monotonic()
        if self.first_frame_done is None:
            self.first_frame_done = self.last_frame_done
        return analysis

    def _count(self, detections: list[Any], groups: int, seconds: float) -> None:
        metrics = instruments.get()
        metrics.frames_analysed.labels(self.camera_id).inc()
        metrics.detection_seconds.observe(seconds)
        for cls, count in collections.Counter(d.cls for d in detections).items():
            metrics.objects.labels(cls).inc(count)
        if groups:
            metrics.groups.labels(self.camera_id).inc(groups)

    def _enqueue_group(self, frame: NDArray[np.uint8], group: TrafficGroup, ts: float, reason: str) -> None:
        image_key = store.store_image(self._redis, encode_jpeg(crop(frame, group.bbox), 85),
                                        self._settings.image_ttl)
        self._enqueue(Job(cameraId=self.camera_id, groupId=group.group_id, groupIndex=group.group_index,
                          imageKey=image_key, features=GroupFacts.model_validate(group.features.to_dict()),
                          memberTrackIds=group.member_ids, frameTimestamp=ts, reason=reason))
        self.tasks_enqueued += 1
