"""Object detection with ultralytics YOLO: one model per process, shared safely by every capture loop.

The model is loaded lazily (the first camera pays the load, not the web tier's start) and guarded by a lock:
ultralytics predictors are not thread-safe (defect 7 of the old system). Results are converted here, once, into
:class:`~traffic_celery.vision.types.Detection`; nothing downstream touches ultralytics objects.

Every call may give its own input size (`imgsz`: the longer side, a camera's `imgsz` or a crop's): a YOLOv8 .tflite
model runs at any size through :mod:`traffic_celery.vision.litert` (ultralytics would run it at its fixed 640x640);
other formats go through ultralytics, which honours the size for PyTorch models and dynamic exports (a static export
runs at its own size, said once in the log). :meth:`Detector.predict` gives raw boxes (the motion gate of
:mod:`traffic_celery.vision.gating` detects crops with it), :meth:`Detector.track` turns boxes into tracked
detections, and :meth:`Detector.detect` is both.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from traffic_celery.settings import REPO_ROOT, Settings
from traffic_celery.vision import litert
from traffic_celery.vision.litert import Prediction
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
                 classes: Sequence[str] | None = None, interpreters: int = litert.INTERPRETERS):
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
        self.imgsz = imgsz
        self._lock = threading.Lock()
        self.model_path = model_path
        self._any_size = litert.load(model_path, interpreters)  # None: ultralytics runs it
        self.inputs: collections.Counter[int] = collections.Counter()  # calls per input size (longer side)
        self._fixed_size_logged = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Detector:
        return cls(settings.model_path, conf=settings.yolo_conf, imgsz=settings.yolo_imgsz,
                   classes=settings.yolo_classes, interpreters=settings.yolo_interpreters)

    @property
    def any_size(self) -> bool:
        """Whether the input size of a call changes its cost (a small crop costs little): a .tflite model this
        module rewrites, or a PyTorch model (ultralytics runs it at any size); not a static export."""
        return self._any_size is not None or self.model_path.lower().endswith(".pt")

    def warm_up(self) -> None:
        """Run one blank frame: the first inference builds the runtime (seconds), so no real frame pays it."""
        self.detect(np.zeros((self.imgsz, self.imgsz, 3), dtype=np.uint8))

    @property
    def conf(self) -> float:
        return self._conf

    def predict(self, image: NDArray[np.uint8], imgsz: int | None = None, conf: float | None = None) -> Prediction:
        """Raw boxes in one BGR image (a frame or a crop), in its pixels, `imgsz` (default: the setting) being the
        input's longer side, `conf` the lowest confidence (default: the setting)."""
        size = imgsz or self.imgsz
        floor = self._conf if conf is None else conf
        if self._any_size is not None:
            with self._lock:
                self.inputs[size] += 1
                return self._any_size.predict(image, size, floor, self._class_ids)
        if size != self.imgsz and not self._fixed_size_logged:
            self._fixed_size_logged = True  # ultralytics keeps a static export's own size whatever it is asked
            logger.info("model %s: input size %d asked; a static export runs at the size it was exported at",
                        self.model_path, size)
        with self._lock:
            self.inputs[size] += 1
            result = self._model.predict(image, conf=floor, imgsz=size, classes=self._class_ids,
                                         verbose=False)[0]
        boxes = result.boxes.cpu().numpy()
        return Prediction(np.asarray(boxes.xyxy, dtype=np.float32).reshape(-1, 4),
                          np.asarray(boxes.conf, dtype=np.float32), np.asarray(boxes.cls, dtype=np.float32))

    def detect(self, frame: NDArray[np.uint8], tracker: Tracker | None = None,
               imgsz: int | None = None) -> list[Detection]:
        """Objects in one BGR frame, most confident first. With the camera's tracker, `track_id`s are stable
        across frames (and only confirmed tracks are returned); without it, they are indexes in the frame."""
        return self.track(self.predict(frame, imgsz), tracker, frame)

    def track(self, boxes: Prediction, tracker: Tracker | None, frame: NDArray[np.uint8]) -> list[Detection]:
        """`boxes` of `frame` as detections, through the camera's tracker when there is one."""
        ids: list[int | None] = list(range(len(boxes)))
        xyxy, conf, cls = list(boxes.xyxy), list(boxes.conf), list(boxes.cls)
        if tracker is not None:
            rows = tracker.update(boxes, frame)
            matched = [int(row[7]) for row in rows]
            # confirmed tracks with their ids, then the detections the tracker has not confirmed yet: an object
            # that just appeared next to a vehicle must not be hidden for a frame. A track shows its detection's
            # box, not the Kalman filter's estimate, which lags a walker seen at 2 fps (measured: 1 in 60 boxes
            # off the object by IoU < 0.5); the safety layer smooths positions itself.
            untracked = [i for i in range(len(boxes)) if i not in set(matched)]
            ids = [int(row[4]) for row in rows] + [None] * len(untracked)
            order = matched + untracked
            xyxy, conf, cls = [xyxy[i] for i in order], [conf[i] for i in order], [cls[i] for i in order]
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
