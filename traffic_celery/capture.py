"""One camera's capture loop: read the newest frame, detect, group, publish, and enqueue assessments.

A reader thread (:class:`FrameSource`) keeps only the newest frame, so a slow detector never builds a backlog;
a file is read at its own pace (real time) and looped when `loop_files` is on. The loop thread
(:class:`CaptureLoop`) wakes every `frame_interval` seconds, analyses the newest frame and:

- publishes `detection_result` (with the frame as JPEG/base64) on the camera's channel;
- at most every `assess_interval` seconds, stores each group's crop in Redis with a TTL and hands a job per group
  to `enqueue` (which puts `assess_group` on the chosen key's queue).

Status changes go out as `camera_status` events; a camera that fails stops only itself.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import cv2
import numpy as np
import redis

from . import results
from .detection import Detector
from .grouping import GroupIds, group_detections
from .settings import Settings
from .tracking import Tracker
from .types import FrameAnalysis, TrafficGroup

logger = logging.getLogger(__name__)

Enqueue = Callable[[dict[str, Any]], str]  # job -> task id


class SourceError(RuntimeError):
    """The camera cannot be opened or read; the message says which URL and what to check."""


def is_file_source(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and url[1:3] == ":\\")


def open_capture(url: str) -> cv2.VideoCapture:
    """Open a file, an rtsp/http(s) URL or a webcam index with OpenCV; raise SourceError if it does not open."""
    if url.isdigit():
        cap = cv2.VideoCapture(int(url))
    else:
        target = urlparse(url).path if url.startswith("file://") else url
        if is_file_source(url) and not Path(target).exists():
            raise SourceError(f"camera source {url!r} does not exist; give an existing file, an rtsp:// or "
                              f"http(s):// URL, or a webcam index")
        cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open camera source {url!r}; check the URL, the network and the credentials")
    return cap


class FrameSource:
    """A reader thread that keeps the newest frame of a capture."""

    def __init__(self, url: str, loop_files: bool = True):
        self.url = url
        self._loop = loop_files and is_file_source(url)
        self._cap = open_capture(url)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._pace = 1.0 / fps if is_file_source(url) and 0 < fps < 240 else 0.0
        self._frame: Optional[np.ndarray] = None
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.error: Optional[str] = None
        self.frames_read = 0
        self._thread = threading.Thread(target=self._run, name=f"reader-{url[:40]}", daemon=True)

    def start(self) -> "FrameSource":
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                if not ok:
                    if self._loop and self.frames_read:
                        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        continue
                    self.error = "end of stream" if is_file_source(self.url) else "stream lost"
                    break
                self.frames_read += 1
                with self._cond:
                    self._frame, self._seq = frame, self._seq + 1
                    self._cond.notify_all()
                if self._pace:
                    next_at = max(next_at + self._pace, time.monotonic() - 1.0)
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            self._cap.release()
            with self._cond:
                self._cond.notify_all()

    def newest(self, after_seq: int, timeout: float) -> tuple[Optional[np.ndarray], int]:
        """The newest frame if it is newer than `after_seq`, waiting up to `timeout`; (None, seq) otherwise."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after_seq or not self._thread.is_alive(), timeout)
            return (self._frame, self._seq) if self._seq > after_seq else (None, self._seq)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def crop(frame: np.ndarray, bbox: tuple[float, float, float, float], pad: float = 0.1) -> np.ndarray:
    """The group's box with a margin of `pad` times its size, clipped to the frame."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = bbox
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    return frame[max(0, int(y1 - py)):min(h, int(y2 + py) + 1), max(0, int(x1 - px)):min(w, int(x2 + px) + 1)]


class CaptureLoop:
    """The loop thread of one camera. `stop()` ends it; `done` is set when it has ended for any reason."""

    def __init__(self, camera_id: str, url: str, settings: Settings, r: redis.Redis,
                 detector: Callable[[], Detector], enqueue: Enqueue):
        self.camera_id = camera_id
        self.url = url
        self._settings = settings
        self._redis = r
        self._detector = detector
        self._enqueue = enqueue
        self._stop = threading.Event()
        self.done = threading.Event()
        self.log = logger.getChild(f"camera.{camera_id}")
        self.frames_analysed = 0
        self.tasks_enqueued = 0
        self._last_assess = 0.0
        self._tracker: Optional[Tracker] = None  # made in the loop's thread (imports ultralytics)
        self._group_ids = GroupIds()
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera_id}", daemon=True)

    def start(self) -> "CaptureLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _status(self, online: bool, message: str) -> None:
        results.publish(self._redis, self.camera_id, "camera_status",
                        {"cameraId": self.camera_id, "status": 1 if online else 0, "message": message})

    def _run(self) -> None:
        source: Optional[FrameSource] = None
        try:
            source = FrameSource(self.url, self._settings.loop_files).start()
            detector = self._detector()
            self._tracker = Tracker()
            self._status(True, f"streaming {self.url}")
            self.log.info("capture started on %s", self.url)
            seq = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                frame, seq_now = source.newest(seq, timeout=self._settings.frame_interval * 4 + 1)
                if frame is None:
                    if not source.alive:
                        raise SourceError(f"camera {self.camera_id}: {source.error or 'reader stopped'} "
                                          f"({self.url})")
                    continue
                seq = seq_now
                self.analyse(frame, detector)
                next_at = max(next_at + self._settings.frame_interval, time.monotonic())
                if self._stop.wait(next_at - time.monotonic()):
                    break
            self._status(False, "stopped")
        except Exception as exc:  # one failing camera must stop only itself, and say why
            message = str(exc) if isinstance(exc, SourceError) else f"camera {self.camera_id} failed: {exc}"
            self.log.warning("%s", message, exc_info=not isinstance(exc, SourceError))
            try:
                self._status(False, message)
                results.publish(self._redis, self.camera_id, "error",
                                {"code": "camera_failed", "message": message, "cameraId": self.camera_id})
            except redis.RedisError:
                self.log.exception("cannot report the failure of camera %s", self.camera_id)
        finally:
            if source is not None:
                source.stop()
            self.done.set()
            self.log.info("capture ended after %d frames, %d tasks", self.frames_analysed, self.tasks_enqueued)

    def analyse(self, frame: np.ndarray, detector: Detector) -> FrameAnalysis:
        """Detect, group, publish and (when due) enqueue for one frame."""
        started = time.monotonic()
        ts = time.time()
        detections = detector.detect(frame, self._tracker)
        self.frames_analysed += 1
        groups = self._group_ids.assign(group_detections(detections, self._settings.group_link_factor,
                                                         self._settings.min_group_size))
        analysis = FrameAnalysis(self.camera_id, ts, frame.shape[1], frame.shape[0], detections, groups)
        if groups and time.monotonic() - self._last_assess >= self._settings.assess_interval:
            self._last_assess = time.monotonic()
            for group in groups:
                self._enqueue_group(frame, group, ts)
        analysis.process_time = time.monotonic() - started
        frame_b64 = base64.b64encode(encode_jpeg(frame, self._settings.frame_jpeg_quality)).decode("ascii")
        results.publish(self._redis, self.camera_id, "detection_result", analysis.to_event(frame_b64))
        return analysis

    def _enqueue_group(self, frame: np.ndarray, group: TrafficGroup, ts: float) -> None:
        image_key = results.store_image(self._redis, encode_jpeg(crop(frame, group.bbox), 85),
                                        self._settings.image_ttl)
        job = {"cameraId": self.camera_id, "groupId": group.group_id, "groupIndex": group.group_index,
               "imageKey": image_key, "features": group.features.to_dict(),
               "memberTrackIds": group.member_ids, "frameTimestamp": ts}
        self._enqueue(job)
        self.tasks_enqueued += 1
