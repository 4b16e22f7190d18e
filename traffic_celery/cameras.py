"""The cameras running in this process: one capture loop per camera id, whatever the number of viewers."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import redis

from . import results
from .capture import CaptureLoop, Enqueue
from .detection import Detector
from .settings import Settings

logger = logging.getLogger(__name__)


class CameraManager:
    def __init__(self, settings: Settings, r: redis.Redis, detector: Callable[[], Detector], enqueue: Enqueue):
        self._settings, self._redis, self._detector, self._enqueue = settings, r, detector, enqueue
        self._loops: dict[str, CaptureLoop] = {}
        self._lock = threading.Lock()

    def start(self, camera_id: str, url: str) -> bool:
        """Start the camera's loop; False if it already runs on that URL (a second viewer just subscribes)."""
        with self._lock:
            loop = self._loops.get(camera_id)
            if loop is not None and not loop.done.is_set():
                if loop.url == url:
                    return False
                loop.stop()
            self._loops[camera_id] = CaptureLoop(camera_id, url, self._settings, self._redis, self._detector,
                                                 self._enqueue).start()
            return True

    def stop(self, camera_id: str, reason: str = "stopped by an operator") -> bool:
        """Stop the camera's loop; False if it was not running."""
        with self._lock:
            loop = self._loops.pop(camera_id, None)
        if loop is None:
            return False
        loop.stop()
        results.publish(self._redis, camera_id, "stream_stopped", {"cameraId": camera_id, "reason": reason})
        return True

    def cameras(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {cid: {"cameraId": cid, "url": loop.url, "running": not loop.done.is_set(),
                          "framesAnalysed": loop.frames_analysed, "tasksEnqueued": loop.tasks_enqueued}
                    for cid, loop in self._loops.items()}

    def stop_all(self) -> None:
        with self._lock:
            loops, self._loops = list(self._loops.values()), {}
        for loop in loops:
            loop.stop()
        logger.info("stopped %d capture loops", len(loops))
