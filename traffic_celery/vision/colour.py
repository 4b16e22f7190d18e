"""The detector of the synthetic scenes: finds each palette colour's largest blob.

The synthetic scenes of :mod:`traffic_celery.safety.synthetic` draw road users as filled rectangles of known
colours moving with known velocities, so every near-miss metric has a hand-computed truth to test against. YOLO
does not detect coloured rectangles, and a detector with its own errors would blur what the test measures (the
smoothing and the metrics). This detector has the same interface as
:class:`~traffic_celery.vision.detection.Detector` and reads the scene back exactly: one road user per colour of
:data:`PALETTE`, its track id the palette entry's (stable by construction, no tracker needed), confidence 1.0.
The colour match has a tolerance that survives video compression (JPEG blurs colour edges).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np
from numpy.typing import NDArray

from traffic_celery.vision.types import Detection

if TYPE_CHECKING:
    from traffic_celery.vision.tracking import Tracker

logger = logging.getLogger(__name__)

BGR = tuple[int, int, int]

# (track id, class, BGR colour): saturated colours, each more than 2 x TOLERANCE from every other in some channel,
# and from the grey road, the verge and the white markings of the synthetic background (the six corners of the
# colour cube that are neither black nor white).
PALETTE: tuple[tuple[int, str, BGR], ...] = (
    (1, "car", (0, 0, 220)),  # red
    (2, "person", (230, 40, 0)),  # blue
    (3, "car", (0, 200, 0)),  # green
    (4, "bicycle", (0, 210, 230)),  # yellow
    (5, "truck", (200, 0, 200)),  # magenta
    (6, "person", (210, 210, 0)),  # cyan
)
TOLERANCE = 70  # per channel: MJPEG keeps blob interiors within ~15; an edge pixel half blob, half road is within ~60
MIN_AREA = 12  # pixels: smaller blobs are compression noise at an edge


class ColourDetector:
    """Finds the road users of a synthetic scene by their palette colour."""

    def __init__(self, palette: tuple[tuple[int, str, BGR], ...] = PALETTE, tolerance: int = TOLERANCE):
        self.palette = palette
        self.tolerance = tolerance

    def warm_up(self) -> None:
        """Nothing to build; here for the interface of the YOLO detector."""

    def detect(self, frame: NDArray[np.uint8], tracker: Tracker | None = None) -> list[Detection]:
        """The largest blob of each palette colour in one BGR frame; `tracker` is ignored (ids are stable)."""
        found: list[Detection] = []
        for track_id, cls, colour in self.palette:
            centre = np.asarray(colour, dtype=np.int32)
            lower = np.clip(centre - self.tolerance, 0, 255).astype(np.uint8)
            upper = np.clip(centre + self.tolerance, 0, 255).astype(np.uint8)
            mask = cv2.inRange(frame, lower, upper)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if not contours:
                continue
            largest = max(contours, key=cv2.contourArea)
            x, y, w, h = cv2.boundingRect(largest)
            if w * h < MIN_AREA:
                continue
            found.append(Detection(track_id=track_id, cls=cls, confidence=1.0,
                                   bbox=(float(x), float(y), float(x + w), float(y + h))))
        return found
