"""Box geometry in the relative unit the project uses everywhere: heights of the smaller object."""

from __future__ import annotations

import math

from traffic_celery.vision.types import BBox


def box_gap(a: BBox, b: BBox) -> float:
    """Euclidean gap between two axis-aligned boxes in pixels; 0 when they touch or overlap."""
    dx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return math.hypot(dx, dy)


def relative_box_gap(a: BBox, b: BBox) -> float:
    """Gap between two boxes in heights of the smaller one (0 when they touch or overlap)."""
    scale = max(min(a[3] - a[1], b[3] - b[1]), 1e-6)
    return box_gap(a, b) / scale
