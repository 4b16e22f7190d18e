"""Recent track positions of one camera, for approach speed and time-to-contact between two tracked objects.

Speeds are in object heights per second (the same relative unit as the gaps), so they do not depend on the
resolution: the gap between two tracks now is compared with their gap at the oldest frame of the last
`window` seconds in which both were seen (at least the previous frame). A positive speed means they are closing;
time-to-contact is the gap divided by that speed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from traffic_celery.vision.geometry import relative_box_gap
from traffic_celery.vision.types import BBox, Detection


class Motion:
    """One camera's recent frames of tracked boxes."""

    def __init__(self, window: float = 1.0):
        self.window = window
        self._frames: deque[tuple[float, dict[int, BBox]]] = deque()

    def observe(self, ts: float, detections: Sequence[Detection]) -> None:
        """Remember this frame's tracked boxes (call after the frame's features are computed)."""
        self._frames.append((ts, {d.track_id: d.bbox for d in detections if d.track_id is not None}))
        while len(self._frames) > 2 and self._frames[1][0] <= ts - self.window:
            self._frames.popleft()

    def approach(self, a: Detection, b: Detection, ts: float) -> tuple[float, float | None] | None:
        """(closing speed in heights/s, time-to-contact in s or None when not closing); None without history."""
        if a.track_id is None or b.track_id is None:
            return None
        seen = [(then, boxes) for then, boxes in self._frames
                if then < ts and a.track_id in boxes and b.track_id in boxes]
        if not seen:
            return None
        in_window = [item for item in seen if item[0] >= ts - self.window - 1e-9]
        then, boxes = in_window[0] if in_window else seen[-1]
        gap = relative_box_gap(a.bbox, b.bbox)
        speed = (relative_box_gap(boxes[a.track_id], boxes[b.track_id]) - gap) / (ts - then)
        return speed, (gap / speed if speed > 1e-3 else None)
