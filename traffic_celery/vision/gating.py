"""Motion gating: run the detector only where something moved, so a camera's cost follows its scene, not its pixels.

A camera watching a street sees mostly still road: detecting the whole frame every time spends the CPU on pixels
that did not change (Frigate serves many cameras on cheap CPUs the same way). Each camera's capture loop owns a
:class:`MotionGate`; per analysed frame it:

1. finds the moving regions (:class:`MotionMask`): the frame grey, shrunk by the whole factor that makes it about
   `TC_GATE_WIDTH` px wide (768 px: 153), blurred;
   pixels that differ by more than `TC_GATE_THRESHOLD` grey levels from a running-average background
   (`cv2.accumulateWeighted`, `TC_GATE_ALPHA` per analysed frame) or from the previous analysed frame (so a place
   someone just left moves too, and their old box goes), dilated, their contours' bounding boxes (blobs smaller
   than `TC_GATE_MIN_AREA` of the frame are noise), padded by `TC_GATE_MARGIN` of the frame's longer side (a person
   entering is whole), grown to cover the previous detections they touch (so a crop holds whole objects), and
   merged where they overlap and one crop costs no more than two. The background learns at `TC_GATE_ALPHA` where
   nothing changed since the last frame (a vehicle that stopped is background within seconds) and at a tenth of
   it where something passes (no trail of ghosts behind a walker);
2. chooses what to detect:
   - nothing moved: no detector, no tracker: the camera's last detections stand, with their track ids (a parked
     vehicle keeps its id);
   - a keyframe: the whole frame, on the first frame, every `TC_GATE_REFRESH` seconds (so a miss never lasts long)
     and when the regions cover more than `TC_GATE_MAX_AREA` of the frame (then the whole frame is cheaper: one
     call instead of many, and a scene change such as a light switching on moves everything);
   - otherwise each region is cropped, grown to the model's 32 px grid with picture rather than grey padding, and
     detected at the scale of the whole frame (a 150x200 px crop of a 768x576 frame at `imgsz` 640 runs at
     128x160: 1/15 of the whole frame's 640x480), its boxes mapped back to the frame; the previous frame's
     detections outside every region are kept;
3. keeps, with hysteresis, an object whose confidence dips up to `TC_GATE_HYSTERESIS` under `TC_YOLO_CONF` while it
   continues a box of the previous frame (a crop sees less context than the whole frame; full-frame detection
   itself blinks on such objects);
4. hands the camera's tracker (ByteTrack) the whole set (kept boxes, unchanged, plus the new ones), so it sees a
   consistent scene every frame and ids stay stable.

`TC_GATE=off` restores full-frame detection on every frame. Crops only pay with a model that runs at any input size
(:mod:`traffic_celery.vision.litert` for .tflite, ultralytics for .pt); with a static export the gate still skips
still frames but detects the whole frame whenever something moved.

The defaults were measured on the sample video at 2 fps (`bench/detection.py`), people walking over a third of the
frame all the time, a hard case: recall 0.98 against full-frame detection on the same frames (tracked objects,
IoU >= 0.5, same class; the detector reaches only 0.97 against itself on the frame shifted by one pixel), for 38%
of the full frame's input pixels (keyframes included) and about half its detection CPU. A `TC_GATE_MARGIN` of 0.02
or a `TC_GATE_REFRESH` of 10 s save 10% of the pixels for 0.002-0.005 of recall; a `TC_GATE_THRESHOLD` of 25 misses
more, 15 detects 5% more pixels for nothing.

Settings (defaults): `TC_GATE` (on), `TC_GATE_REFRESH` (5 s), `TC_GATE_MAX_AREA` (0.5), `TC_GATE_WIDTH` (160 px),
`TC_GATE_THRESHOLD` (20), `TC_GATE_ALPHA` (0.2), `TC_GATE_MIN_AREA` (0.0005), `TC_GATE_MARGIN` (0.03),
`TC_GATE_HYSTERESIS` (0.1).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from traffic_celery.settings import Settings
from traffic_celery.vision.litert import STRIDE, Prediction, nms
from traffic_celery.vision.types import Detection

if TYPE_CHECKING:
    from traffic_celery.vision.detection import Detector
    from traffic_celery.vision.tracking import Tracker

logger = logging.getLogger(__name__)

Region = tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels, x2/y2 exclusive
MAX_REGIONS = 12  # more separate regions than this: the whole frame (each call has a fixed cost)
DILATE = 1  # iterations of a 3x3 dilation of the motion mask (5 px of a 768 px frame)
SLOW_LEARNING = 0.1  # the background's learning rate where something passes, relative to TC_GATE_ALPHA


@dataclass(frozen=True)
class GateConfig:
    """The gate's thresholds (from the `TC_GATE_*` settings)."""

    enabled: bool = True
    refresh: float = 5.0
    max_area: float = 0.5
    width: int = 160
    threshold: int = 20
    alpha: float = 0.2
    min_area: float = 0.0005
    margin: float = 0.03
    hysteresis: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> GateConfig:
        return cls(enabled=settings.gate, refresh=settings.gate_refresh, max_area=settings.gate_max_area,
                   width=settings.gate_width, threshold=settings.gate_threshold, alpha=settings.gate_alpha,
                   min_area=settings.gate_min_area, margin=settings.gate_margin,
                   hysteresis=settings.gate_hysteresis)


class MotionMask:
    """One camera's motion: moving boxes of a frame against a running-average background and the previous frame."""

    def __init__(self, config: GateConfig):
        self._config = config
        self._background: NDArray[np.float32] | None = None
        self._previous: NDArray[Any] | None = None  # grey, uint8
        self._kernel = np.ones((3, 3), np.uint8)

    def update(self, frame: NDArray[np.uint8]) -> list[Region] | None:
        """The moving boxes of `frame` in its pixels (unpadded); None on the first frame or a new frame size."""
        h, w = frame.shape[:2]
        k = max(1, round(w / self._config.width))  # a whole factor: OpenCV's fast area resize (0.3 ms, not 1.7)
        small_w, small_h = max(1, w // k), max(1, h // k)
        grey: NDArray[Any] = cv2.cvtColor(frame[:small_h * k, :small_w * k], cv2.COLOR_BGR2GRAY)
        grey = cv2.GaussianBlur(cv2.resize(grey, (small_w, small_h), interpolation=cv2.INTER_AREA), (5, 5), 0)
        if self._background is None or self._previous is None or self._previous.shape != grey.shape:
            self._background, self._previous = grey.astype(np.float32), grey
            return None
        threshold = self._config.threshold
        changed: NDArray[Any] = cv2.threshold(cv2.absdiff(grey, self._previous), threshold, 255,
                                              cv2.THRESH_BINARY)[1]
        moved: NDArray[Any] = cv2.bitwise_or(changed, cv2.threshold(
            cv2.absdiff(grey, cv2.convertScaleAbs(self._background)), threshold, 255, cv2.THRESH_BINARY)[1])
        # the background learns fast where nothing changed since the last frame (a vehicle that stopped is part
        # of it within seconds) and slowly where something passes (no trail of ghosts behind a walker)
        cv2.accumulateWeighted(grey, self._background, self._config.alpha, mask=cv2.bitwise_not(changed))
        cv2.accumulateWeighted(grey, self._background, self._config.alpha * SLOW_LEARNING, mask=changed)
        self._previous = grey
        moved = cv2.dilate(moved, self._kernel, iterations=DILATE)
        contours, _ = cv2.findContours(moved, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self._config.min_area * small_w * small_h
        boxes: list[Region] = []
        for contour in contours:
            x, y, bw, bh = cv2.boundingRect(contour)
            if bw * bh >= min_area:
                boxes.append((x * k, y * k, min(w, (x + bw) * k), min(h, (y + bh) * k)))
        return boxes


def box_iou(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """IoU of every box of `a` (n, 4) with every box of `b` (m, 4), xyxy: (n, m)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou: NDArray[np.float32] = (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)).astype(np.float32)
    return iou


def _intersects(a: Region | tuple[float, float, float, float], b: Region) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(a: Region, b: Region) -> Region:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _centred_in(xyxy: NDArray[np.float32], region: Region) -> NDArray[np.bool_]:
    """Which boxes have their centre in `region`: a crop answers for its region; an object that only its margin
    shows stands outside every region, where the previous detections are kept."""
    cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
    inside: NDArray[np.bool_] = (cx >= region[0]) & (cx < region[2]) & (cy >= region[1]) & (cy < region[3])
    return inside


def _area(box: Region) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def merge_regions(boxes: list[Region], previous: NDArray[np.float32], pad: int, width: int,
                  height: int) -> list[Region]:
    """`boxes` padded by `pad`, grown to cover the `previous` boxes (xyxy) they touch, clipped to the frame; two
    regions that overlap become one when their union has no more pixels than the two apart (else both stay, and
    the detections of their overlap are deduplicated)."""
    regions = [(max(0, x1 - pad), max(0, y1 - pad), min(width, x2 + pad), min(height, y2 + pad))
               for x1, y1, x2, y2 in boxes]
    old = [(max(0, math.floor(b[0])), max(0, math.floor(b[1])), min(width, math.ceil(b[2])),
            min(height, math.ceil(b[3]))) for b in previous.tolist()]
    changed = True
    while changed:
        changed = False
        merged: list[Region] = []
        for region in regions:
            for box in old:
                if _intersects(box, region) and _union(box, region) != region:
                    region, changed = _union(box, region), True
            for i, other in enumerate(merged):
                union = _union(other, region)
                if _intersects(other, region) and _area(union) <= _area(other) + _area(region):
                    merged[i], changed = union, True
                    break
            else:
                merged.append(region)
        regions = merged
    return regions


def fit_to_grid(region: Region, scale: float, width: int, height: int) -> Region:
    """`region` grown (about its centre, kept inside the frame) so that at `scale` its sides are multiples of the
    model's stride: the detector's input is then all picture, where it would otherwise pad with grey (the
    whole frame has no grey band at its sides, and a crop should see what the whole frame sees)."""
    def fit(lo: int, hi: int, limit: int) -> tuple[int, int]:
        want = min(limit, math.ceil(math.ceil((hi - lo) * scale / STRIDE) * STRIDE / scale))
        lo = max(0, min(lo - (want - (hi - lo)) // 2, limit - want))
        return lo, lo + want

    x1, x2 = fit(region[0], region[2], width)
    y1, y2 = fit(region[1], region[3], height)
    return x1, y1, x2, y2


class MotionGate:
    """One camera's gated detection. `counts` says how its frames went: `full` (keyframes), `regions` (crops
    only), `still` (no detector); `crops` counts the crops detected."""

    def __init__(self, config: GateConfig):
        self.config = config
        self._mask = MotionMask(config)
        self._raw = Prediction.empty()  # the boxes the tracker saw last (raw detector boxes, frame pixels)
        self._last: list[Detection] = []  # what the last frame gave
        self._last_full: float | None = None
        self._shape: tuple[int, int] | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    def detect(self, frame: NDArray[np.uint8], ts: float, detector: Detector, tracker: Tracker | None,
               imgsz: int | None = None) -> list[Detection]:
        """The frame's detections (tracked with `tracker`), running the detector only where something moved."""
        size = imgsz or detector.imgsz
        if not self.config.enabled:
            self.counts["full"] += 1
            return detector.detect(frame, tracker, size)
        h, w = frame.shape[:2]
        moving = self._mask.update(frame)
        if self._shape != (h, w):  # a new camera or a new resolution: start again from a keyframe
            self._shape, self._last_full, self._raw = (h, w), None, Prediction.empty()
        due = self._last_full is None or ts - self._last_full >= self.config.refresh or ts < self._last_full
        if moving is None or due:
            return self._full(frame, ts, detector, tracker, size)
        if not moving:
            self.counts["still"] += 1
            return self._last
        if not detector.any_size:  # a static export: a crop would cost a whole frame
            return self._full(frame, ts, detector, tracker, size)
        pad = round(self.config.margin * max(w, h))
        regions = merge_regions(moving, self._raw.xyxy, pad, w, h)
        area = sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions)
        if area > self.config.max_area * w * h or len(regions) > MAX_REGIONS:
            return self._full(frame, ts, detector, tracker, size)
        scale = size / max(w, h)
        found = []
        for region in regions:
            x1, y1, x2, y2 = fit_to_grid(region, scale, w, h)
            crop = frame[y1:y2, x1:x2]
            boxes = detector.predict(crop, max(STRIDE, round(max(x2 - x1, y2 - y1) * scale)),
                                     conf=self._floor(detector))
            if len(boxes):
                boxes = Prediction(boxes.xyxy + np.array([x1, y1, x1, y1], dtype=np.float32), boxes.conf, boxes.cls)
                found.append(boxes[_centred_in(boxes.xyxy, region)])  # not what the grid's margin caught
        self.counts["regions"] += 1
        self.counts["crops"] += len(regions)
        new = Prediction.concat(found)
        if len(found) > 1:  # crops may overlap: one box per object
            new = new[nms(new)]
        new = self._confirmed(new, detector.conf)
        return self._track(Prediction.concat([self._keep_outside(regions), new]), detector, tracker, frame)

    def _full(self, frame: NDArray[np.uint8], ts: float, detector: Detector, tracker: Tracker | None,
              size: int) -> list[Detection]:
        self._last_full = ts
        self.counts["full"] += 1
        boxes = detector.predict(frame, size, conf=self._floor(detector))
        return self._track(self._confirmed(boxes, detector.conf), detector, tracker, frame)

    def _floor(self, detector: Detector) -> float:
        return max(0.01, detector.conf - self.config.hysteresis)

    def _confirmed(self, boxes: Prediction, conf: float) -> Prediction:
        """Boxes at `conf` or more, and weaker ones that continue a box of the previous frame (same class, IoU >=
        0.5): hysteresis, so an object seen at the edge of the threshold does not blink."""
        if not len(boxes) or self.config.hysteresis <= 0:
            return boxes
        keep = boxes.conf >= conf
        weak = np.flatnonzero(~keep)
        if len(weak) and len(self._raw):
            overlap = box_iou(boxes.xyxy[weak], self._raw.xyxy) * (boxes.cls[weak, None] == self._raw.cls[None, :])
            keep[weak[overlap.max(axis=1) >= 0.5]] = True
        return boxes[keep]

    def _keep_outside(self, regions: list[Region]) -> Prediction:
        """The previous boxes that touch no region (nothing moved there: they stand)."""
        keep = np.array([not any(_intersects((box[0], box[1], box[2], box[3]), region) for region in regions)
                         for box in self._raw.xyxy.tolist()], dtype=bool)
        return self._raw[keep] if len(keep) else Prediction.empty()

    def _track(self, boxes: Prediction, detector: Detector, tracker: Tracker | None,
               frame: NDArray[np.uint8]) -> list[Detection]:
        self._raw = boxes
        self._last = detector.track(boxes, tracker, frame)
        return self._last
