"""Calibration of a camera to the ground plane: a homography from four image points to their positions in metres.

The operator marks four image points of a rectangle (or any quadrilateral) of known size on the road, in the same
normalised coordinates as the zones (fractions of the frame), and gives their ground positions in metres. OpenCV's
`getPerspectiveTransform` turns the pairs into a 3x3 homography; a road user's ground position is its box's
bottom-centre mapped through it. A road is not flat everywhere and boxes jitter, so positions are as good as the
four points and the plane: measure the rectangle where the road users are.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from shapely.geometry import Polygon

from traffic_celery.safety.zones import NormPoint, check_inside_frame

MIN_IMAGE_AREA = 1e-4  # of the frame
MIN_GROUND_AREA = 0.25  # m²


class Calibration(BaseModel):
    """Four image points (fractions of the frame) and their positions on the ground (metres), in the same order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: list[NormPoint] = Field(min_length=4, max_length=4, description="[x, y] fractions of the frame (0-1)")
    world: list[tuple[float, float]] = Field(min_length=4, max_length=4, description="[x, y] on the ground, metres")

    @model_validator(mode="after")
    def _usable(self) -> Calibration:
        check_inside_frame(self.image, "the image")
        for what, points, min_area, unit in (("image", self.image, MIN_IMAGE_AREA, "of the frame"),
                                              ("world", self.world, MIN_GROUND_AREA, "m²")):
            polygon = Polygon(points)
            if not polygon.is_valid:
                raise ValueError(f"the four {what} points cross over: give them in order around the rectangle "
                                 f"(for example clockwise from the top-left corner)")
            # any three on one line make the homography degenerate, even when the four enclose some area
            smallest = min(Polygon(triple).area for triple in combinations(points, 3))
            if smallest < min_area / 4 <= polygon.area:
                raise ValueError(f"three of the four {what} points are on one line: the four must be the corners "
                                 f"of a quadrilateral")
            if polygon.area < min_area:
                raise ValueError(f"the four {what} points enclose almost no area ({polygon.area:.3g} {unit}): "
                                 f"three of them are on one line, or too close together")
        return self


class GroundPlane:
    """The homography of one calibration: normalised image coordinates <-> metres on the ground."""

    def __init__(self, calibration: Calibration):
        self.calibration = calibration
        src = np.asarray(calibration.image, dtype=np.float32)
        dst = np.asarray(calibration.world, dtype=np.float32)
        self.matrix: NDArray[np.float64] = np.asarray(cv2.getPerspectiveTransform(src, dst), dtype=np.float64)
        self.inverse: NDArray[np.float64] = np.asarray(cv2.getPerspectiveTransform(dst, src), dtype=np.float64)

    def to_ground(self, points: Sequence[NormPoint] | NDArray[np.floating]) -> NDArray[np.float64]:
        """Ground positions (metres) of normalised image points, an (N, 2) array."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
        if not len(pts):
            return np.zeros((0, 2))
        return np.asarray(cv2.perspectiveTransform(pts, self.matrix), dtype=np.float64).reshape(-1, 2)

    def to_image(self, points: Sequence[tuple[float, float]] | NDArray[np.floating]) -> NDArray[np.float64]:
        """Normalised image points of ground positions (metres), an (N, 2) array."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
        if not len(pts):
            return np.zeros((0, 2))
        return np.asarray(cv2.perspectiveTransform(pts, self.inverse), dtype=np.float64).reshape(-1, 2)
