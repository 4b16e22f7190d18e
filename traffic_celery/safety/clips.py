"""Snapshots and clips of incidents, from the frames the capture loop analysed.

A camera keeps its recent analysed frames in a :class:`FrameRing`: the JPEG it already encoded for its viewers and
the detections, so keeping a frame costs no encoding and about 50 KB. The ring holds `pre` seconds, and more while
an incident is open, so that a clip can run from `pre` seconds before the incident to `post` seconds after it.

Clips are WebM with VP8 (OpenCV's `VideoWriter`, fourcc `VP80`): browsers play it in a `<video>` element. (MP4 was
the first idea; this OpenCV build cannot write H.264, and the MPEG-4 Part 2 it can write in MP4 does not play in
Chromium.) The clip's frame rate is the rate frames were analysed at (2/s at the default `TC_FRAME_INTERVAL`), so
it plays in real time: its duration is the span of the incident plus the pre- and post-roll.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from traffic_celery.vision.types import Detection

logger = logging.getLogger(__name__)

CLIP_CONTENT_TYPE = "video/webm"
SNAPSHOT_CONTENT_TYPE = "image/jpeg"
INCIDENT_COLOUR = (40, 40, 240)  # BGR: the incident's road users
OTHER_COLOUR = (200, 200, 200)


@dataclass(frozen=True)
class RingFrame:
    ts: float
    jpeg: bytes
    detections: tuple[Detection, ...]


class FrameRing:
    """Recent analysed frames of one camera, oldest first."""

    def __init__(self, pre: float, longest: float):
        self.pre = pre
        self.longest = longest  # never more than this many seconds, whatever is open
        self._frames: deque[RingFrame] = deque()

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, ts: float, jpeg: bytes, detections: Sequence[Detection], keep_from: float | None = None) -> None:
        """Keep this frame; drop frames older than `pre` seconds, or than `keep_from - pre` while an incident that
        started at `keep_from` still needs them (bounded by `longest`)."""
        self._frames.append(RingFrame(ts, jpeg, tuple(detections)))
        oldest = ts - self.pre if keep_from is None else min(ts - self.pre, keep_from - self.pre)
        oldest = max(oldest, ts - self.longest)
        while self._frames and self._frames[0].ts < oldest - 1e-6:
            self._frames.popleft()

    def between(self, start: float, end: float) -> list[RingFrame]:
        return [f for f in self._frames if start - 1e-6 <= f.ts <= end + 1e-6]


def draw_boxes(frame: NDArray[np.uint8], detections: Sequence[Detection], highlight: Collection[int]) -> None:
    """Draw boxes on `frame` in place: the incident's road users thick and red, the others thin and grey."""
    for d in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in d.bbox)
        mine = d.track_id is not None and d.track_id in highlight
        colour = INCIDENT_COLOUR if mine else OTHER_COLOUR
        cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 3 if mine else 1)
        label = d.cls if d.track_id is None else f"{d.cls} #{d.track_id}"
        if d.speed is not None:
            label += f" {d.speed:.0f}"
        cv2.putText(frame, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def snapshot(frame: NDArray[np.uint8], detections: Sequence[Detection], highlight: Collection[int],
             quality: int = 85) -> bytes:
    """The full frame with boxes, as JPEG."""
    image = frame.copy()
    draw_boxes(image, detections, highlight)
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("JPEG encoding of a snapshot failed")
    return buf.tobytes()


def frame_rate(frames: Sequence[RingFrame], default: float) -> float:
    """The clip's frame rate: the median rate the frames were analysed at."""
    if len(frames) < 2:
        return default
    gaps = np.diff([f.ts for f in frames])
    gap = float(np.median(gaps[gaps > 0])) if np.any(gaps > 0) else 0.0
    return 1.0 / gap if gap > 0 else default


def write_clip(frames: Sequence[RingFrame], highlight: Collection[int], fps: float) -> bytes:
    """A VP8 WebM of the frames, with the incident's road users boxed; empty bytes when there is no frame."""
    if not frames:
        return b""
    first = cv2.imdecode(np.frombuffer(frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    if first is None:
        raise ValueError("a frame of the clip is not a JPEG")
    height, width = first.shape[:2]
    fd, path = tempfile.mkstemp(suffix=".webm", prefix="tc-clip-")
    os.close(fd)
    try:
        writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"VP80"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write VP8/WebM here (its FFmpeg lacks libvpx)")
        try:
            for item in frames:
                decoded = cv2.imdecode(np.frombuffer(item.jpeg, np.uint8), cv2.IMREAD_COLOR)
                if decoded is None:
                    continue
                if decoded.shape[:2] != (height, width):  # the source changed resolution mid-clip
                    decoded = cv2.resize(decoded, (width, height))
                image: NDArray[np.uint8] = np.asarray(decoded, dtype=np.uint8)
                draw_boxes(image, item.detections, highlight)
                writer.write(image)
        finally:
            writer.release()
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)
