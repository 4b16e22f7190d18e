"""Object detection with ultralytics YOLO: one model per process, shared safely by every capture loop.

The model is loaded lazily (the first camera pays the load, not the web tier's start) and guarded by a lock:
ultralytics predictors are not thread-safe (defect 7 of the old system). Results are converted here, once, into
:class:`~traffic_celery.vision.types.Detection`; nothing downstream touches ultralytics objects.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from traffic_celery.settings import REPO_ROOT, Settings
from traffic_celery.vision.types import Detection

if TYPE_CHECKING:
    from traffic_celery.vision.tracking import Tracker

logger = logging.getLogger(__name__)


def configure_ultralytics_offline() -> None:
    """ultralytics must never reach the network nor write settings into $HOME."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / ".run" / "ultralytics"))
    os.environ.setdefault("YOLO_VERBOSE", "False")


class DetectorError(RuntimeError):
    """The model cannot be loaded or run; the message says which file and what to do."""


class Detector:
    """A YOLO model plus the class filter, confidence and image size from settings."""

    def __init__(self, model_path: str, conf: float = 0.3, imgsz: int = 640,
                 classes: Sequence[str] | None = None):
        configure_ultralytics_offline()
        # imported here: the web tier and workers must not pay for torch at import
        from ultralytics.models import YOLO

        try:
            # Any: ultralytics types predict() as a union of results and tensors; this module reads it as Results
            self._model: Any = YOLO(model_path, task="detect")
            self.names: dict[int, str] = dict(self._model.names)  # loads the backend for exported formats
        except Exception as exc:  # ultralytics raises many types for a bad file
            raise DetectorError(f"cannot load detection model {model_path!r} ({exc}); set TC_YOLO_MODEL to a "
                                f".pt/.onnx/.tflite file ultralytics can load") from None
        unknown = [c for c in (classes or []) if c not in self.names.values()]
        if unknown:
            raise DetectorError(f"unknown class names {unknown} for this model; it spells them like "
                                f"{sorted(self.names.values())[:8]}…")
        self._class_ids = [i for i, n in self.names.items() if n in classes] if classes else None
        self._conf = conf
        self._imgsz = imgsz
        self._lock = threading.Lock()
        self.model_path = model_path

    @classmethod
    def from_settings(cls, settings: Settings) -> Detector:
        return cls(settings.model_path, conf=settings.yolo_conf, imgsz=settings.yolo_imgsz,
                   classes=settings.yolo_classes)

    def warm_up(self) -> None:
        """Run one blank frame: the first inference builds the runtime (seconds), so no real frame pays it."""
        self.detect(np.zeros((self._imgsz, self._imgsz, 3), dtype=np.uint8))

    def detect(self, frame: NDArray[np.uint8], tracker: Tracker | None = None) -> list[Detection]:
        """Objects in one BGR frame, most confident first. With the camera's tracker, `track_id`s are stable
        across frames (and only confirmed tracks are returned); without it, they are indexes in the frame."""
        with self._lock:
            result = self._model.predict(frame, conf=self._conf, imgsz=self._imgsz, classes=self._class_ids,
                                         verbose=False)[0]
        boxes = result.boxes.cpu().numpy()
        ids: list[int | None] = list(range(len(boxes)))
        xyxy, conf, cls = list(boxes.xyxy), list(boxes.conf), list(boxes.cls)
        if tracker is not None:
            rows = tracker.update(boxes, frame)
            tracked = {int(row[7]) for row in rows}
            # confirmed tracks with their ids, then the detections the tracker has not confirmed yet: an object
            # that just appeared next to a vehicle must not be hidden for a frame
            untracked = [i for i in range(len(boxes)) if i not in tracked]
            ids = [int(row[4]) for row in rows] + [None] * len(untracked)
            xyxy = [row[:4] for row in rows] + [xyxy[i] for i in untracked]
            conf = [row[5] for row in rows] + [conf[i] for i in untracked]
            cls = [row[6] for row in rows] + [cls[i] for i in untracked]
        dets = [Detection(track_id=i, cls=self.names[int(c)], confidence=float(p),
                          bbox=tuple(float(v) for v in box))  # type: ignore[arg-type]  # a box has 4 values
                for i, box, p, c in zip(ids, xyxy, conf, cls, strict=True)]  # parallel lists, one entry per box
        return sorted(dets, key=lambda d: -d.confidence)


_shared: Detector | None = None
_shared_lock = threading.Lock()


def shared_detector(settings: Settings) -> Detector:
    """The process's one detector, loaded on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            started = time.monotonic()
            _shared = Detector.from_settings(settings)
            _shared.warm_up()
            logger.info("loaded detection model %s in %.1fs", settings.model_path, time.monotonic() - started)
        return _shared
