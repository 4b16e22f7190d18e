"""Per-camera object tracking with ultralytics' ByteTrack, so `trackId`s stay stable across frames.

The detector (one model per process) only predicts; each camera owns a :class:`Tracker` that associates its
frames' boxes, so cameras never share tracker state. ids start at 1 per camera. A new object
needs two frames to be confirmed; until then the detector reports it with `track_id=None`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _bytetrack_config() -> Any:
    import ultralytics  # noqa: PLC0415  (heavy; only loaded where detection runs)
    from ultralytics.utils import YAML, IterableSimpleNamespace  # noqa: PLC0415

    cfg = Path(ultralytics.__file__).parent / "cfg" / "trackers" / "bytetrack.yaml"
    # ultralytics' defaults assume ~30 fps; cameras here are sampled at ~2 fps, where people move further
    # between frames. Measured on the sample video at 0.5 s per frame: the defaults keep 79% of ids from one
    # frame to the next and show 59% of detections; these keep 93% and show 72% (the rest, unconfirmed, are
    # still reported by the detector, without a trackId).
    config = YAML.load(cfg)  # type: ignore[no-untyped-call]  # ultralytics leaves YAML.load unannotated
    return IterableSimpleNamespace(**{**config, "match_thresh": 0.95, "fuse_score": False})


class Tracker:
    """ByteTrack for one camera. `update` takes ultralytics boxes (numpy) and returns tracked rows
    `[x1, y1, x2, y2, track_id, score, cls, index]`; a new object shows once its track is confirmed."""

    def __init__(self) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker  # noqa: PLC0415

        # ultralytics leaves BYTETracker unannotated
        self._tracker = BYTETracker(_bytetrack_config())  # type: ignore[no-untyped-call]

    def update(self, boxes: Any, frame: NDArray[np.uint8]) -> NDArray[np.floating[Any]]:
        tracks = self._tracker.update(boxes, frame)
        return np.asarray(tracks).reshape(-1, 8) if len(tracks) else np.zeros((0, 8))
