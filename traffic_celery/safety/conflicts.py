"""Near-miss metrics of every pair of road users one camera sees: TTC, PET, distance, closing speed, severity.

This module owns the surrogate-safety measures of the safety layer. A near miss is judged on the two classic
measures of the traffic-conflict literature:

- **TTC**, time to collision (Hayward 1972): the time until two road users would touch if both kept their
  current velocities. A TTC of 1.5 s or less marks a serious conflict in urban traffic (Hayward 1972;
  van der Horst 1990, the Swedish and Dutch conflict techniques), 1.0 s or less a critical one.
- **PET**, post-encroachment time (Allen, Shin & Cooper 1978): the time between the first road user leaving the
  point where the two paths cross and the second reaching it. A PET under 1.0 s is a serious encroachment,
  under 0.5 s a critical one.

Positions are the bottom-centres of the boxes (where a road user touches the road). With a calibrated camera
they are mapped to metres on the ground (:class:`~traffic_celery.safety.calibration.GroundPlane`) and the
metrics are metric (distances in metres, speeds in km/h); without, they stay in pixels and distances and speeds
are stated in heights of the smaller box ("relative"). Times are seconds either way.

Detector boxes jitter from frame to frame, so a track's position and velocity are the least-squares line fitted
to its positions of the last `window` seconds (with two points, the finite difference). Both road users are then
extrapolated at constant velocity, each a disc of a radius by class (metres) or half its box width (pixels).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from traffic_celery.protocol import ConflictFacts, ConflictType, Severity, Units
from traffic_celery.safety.calibration import GroundPlane
from traffic_celery.safety.zones import bottom_centre
from traffic_celery.settings import Settings
from traffic_celery.vision.types import Detection

logger = logging.getLogger(__name__)

# Collision radii by class, metres: a road user is a disc around its ground point, and two touch when their
# centres are closer than the sum of their radii. Roughly half the width of the body (a person's shoulders, a
# two-wheeler with its rider) or of the vehicle (a car is about 2 m wide, a bus or truck about 2.5-3 m).
PERSON_RADIUS = 0.3
TWO_WHEELER_RADIUS = 0.6
CAR_RADIUS = 1.0
HEAVY_RADIUS = 1.5
RADIUS_BY_CLASS: dict[str, float] = {"person": PERSON_RADIUS, "bicycle": TWO_WHEELER_RADIUS,
                                     "motorcycle": TWO_WHEELER_RADIUS, "car": CAR_RADIUS, "bus": HEAVY_RADIUS,
                                     "truck": HEAVY_RADIUS, "train": HEAVY_RADIUS}

MOTOR_VEHICLES = frozenset({"car", "motorcycle", "bus", "truck", "train"})
CYCLISTS = frozenset({"bicycle"})
PEDESTRIANS = frozenset({"person"})

# A vehicle slower than this is parked or queueing: it is no party to a near miss.
MOVING_SPEED: dict[str, float] = {"metric": 1.0, "relative": 0.3}  # m/s | heights/s
# A road user slower than this has no meaningful path, hence no crossing point and no PET.
PATH_SPEED: dict[str, float] = {"metric": 0.5, "relative": 0.2}  # m/s | heights/s
MIN_CROSSING_ANGLE = math.radians(20.0)  # nearly parallel paths "cross" far away and at a meaningless point
MS_TO_KMH = 3.6
# An id whose road user moves beyond these between two frames names another road user now (`_teleported`).
MAX_SPEED = 70.0  # m/s (252 km/h)
MAX_RELATIVE_SPEED = 40.0  # object heights/s
JUMP_SLACK, JUMP_SLACK_RELATIVE = 3.0, 1.5  # metres, heights: box jitter and occlusion
MAX_ACCELERATION, MAX_ACCELERATION_RELATIVE = 10.0, 6.0  # m/s², heights/s²: hard braking is about 8 m/s²

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Thresholds:
    """The severity thresholds (seconds) and how far ahead (seconds) the prediction looks."""

    ttc_low: float = 3.0
    ttc_medium: float = 1.5
    ttc_high: float = 1.0
    pet_medium: float = 1.0
    pet_high: float = 0.5
    horizon: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(ttc_low=settings.conflict_ttc_low, ttc_medium=settings.conflict_ttc_medium,
                   ttc_high=settings.conflict_ttc_high, pet_medium=settings.conflict_pet_medium,
                   pet_high=settings.conflict_pet_high, horizon=settings.conflict_horizon)


def severity(ttc: float | None, pet: float | None, thresholds: Thresholds) -> Severity | None:
    """The severity of a pair's near miss from its TTC and PET (either may be None).

    High: TTC <= ttc_high (1.0 s by default) or PET <= pet_high (0.5 s); medium: TTC <= ttc_medium (1.5 s, the
    serious-conflict threshold of Hayward 1972 and van der Horst 1990) or PET <= pet_medium (1.0 s, Allen, Shin &
    Cooper 1978); low: TTC <= ttc_low (3.0 s); otherwise None, not a near miss."""
    if (ttc is not None and ttc <= thresholds.ttc_high) or (pet is not None and pet <= thresholds.pet_high):
        return "high"
    if (ttc is not None and ttc <= thresholds.ttc_medium) or (pet is not None and pet <= thresholds.pet_medium):
        return "medium"
    if ttc is not None and ttc <= thresholds.ttc_low:
        return "low"
    return None


def conflict_type(cls_a: str, cls_b: str) -> ConflictType | None:
    """The kind of a pair, or None when the pair has no motor vehicle (person + bicycle, two bicycles) or a
    party that is no road user this module knows."""
    classes = {cls_a, cls_b}
    known = MOTOR_VEHICLES | CYCLISTS | PEDESTRIANS
    if not classes <= known or not classes & MOTOR_VEHICLES:
        return None
    if classes & PEDESTRIANS:
        return "vehicle-pedestrian"
    if classes & CYCLISTS:
        return "vehicle-cyclist"
    return "vehicle-vehicle"


def time_to_collision(d: FloatArray, w: FloatArray, radius: float, horizon: float) -> float | None:
    """Smallest t >= 0 with |d + w t| = radius (relative position d, relative velocity w); 0 when already within
    the radius; None when the two never get that close or only after `horizon` seconds."""
    c = float(d @ d) - radius * radius
    if c <= 0.0:
        return 0.0
    a = float(w @ w)
    b = float(d @ w)
    if a <= 0.0 or b >= 0.0:  # not moving relative to each other, or moving apart
        return None
    disc = b * b - a * c
    if disc < 0.0:
        return None
    t = (-b - math.sqrt(disc)) / a
    return t if t <= horizon else None


def crossing_times(pa: FloatArray, va: FloatArray, pb: FloatArray, vb: FloatArray, min_speed: float,
                   horizon: float) -> tuple[float, float, FloatArray] | None:
    """(ta, tb, point): signed times at which each road user reaches the crossing point of the two straight paths
    (negative: already passed), and the point. None when one is too slow to have a path, the paths cross at
    less than 20 degrees, either time is beyond the horizon, or both have already passed."""
    sa, sb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
    if sa <= 0.0 or sb <= 0.0 or sa < min_speed or sb < min_speed:
        return None
    sine = abs(float(va[0] * vb[1] - va[1] * vb[0])) / (sa * sb)
    if sine < math.sin(MIN_CROSSING_ANGLE):
        return None
    # pa + va ta = pb + vb tb
    ta, tb = np.linalg.solve(np.column_stack([va, -vb]), pb - pa)
    ta, tb = float(ta), float(tb)
    if abs(ta) > horizon or abs(tb) > horizon or (ta < 0 and tb < 0):
        return None
    return ta, tb, pa + va * ta


@dataclass
class _Track:
    """The recent positions of one track and its latest detection."""

    history: deque[tuple[float, float, float]] = field(default_factory=deque)  # (ts, x, y)
    detection: Detection | None = None
    last_seen: float = 0.0
    position: FloatArray = field(default_factory=lambda: np.zeros(2))  # smoothed, now
    velocity: FloatArray | None = None  # smoothed, per second; None until two positions

    def add(self, ts: float, xy: FloatArray, window: float) -> None:
        while self.history and self.history[-1][0] >= ts:  # a repeated or out-of-order timestamp replaces
            self.history.pop()
        self.history.append((ts, float(xy[0]), float(xy[1])))
        # keep the last `window` seconds, but never fewer than two points (one frame late is still a velocity)
        while len(self.history) > 2 and self.history[1][0] <= ts - window - 1e-9:
            self.history.popleft()
        if len(self.history) > 2 and self.history[0][0] < ts - window - 1e-9:
            self.history.popleft()
        self._fit(ts)

    def _fit(self, ts: float) -> None:
        points = np.asarray(self.history, dtype=np.float64)
        if len(points) < 2:
            self.position = points[-1, 1:].copy()
            self.velocity = None
            return
        t = points[:, 0] - ts  # centred on now: the intercept is the smoothed current position
        design = np.column_stack([t, np.ones_like(t)])
        coef, *_ = np.linalg.lstsq(design, points[:, 1:], rcond=None)
        self.velocity = np.asarray(coef[0], dtype=np.float64)
        self.position = np.asarray(coef[1], dtype=np.float64)


class ConflictMonitor:
    """The near-miss metrics of one camera's road users, frame after frame (one instance per camera)."""

    def __init__(self, thresholds: Thresholds, window: float, ground: GroundPlane | None = None):
        if window <= 0:
            raise ValueError(f"the smoothing window must be positive seconds, not {window}")
        self.thresholds = thresholds
        self.window = window
        self._ground = ground
        self._tracks: dict[int, _Track] = {}
        self._min_distance: dict[tuple[int, int], float] = {}

    @property
    def units(self) -> Units:
        return "metric" if self._ground is not None else "relative"

    def set_ground(self, ground: GroundPlane | None) -> None:
        """A new calibration (or none): histories in the old units are meaningless, forget them."""
        self._ground = ground
        self._tracks.clear()
        self._min_distance.clear()
        logger.info("conflict monitor now %s; track histories forgotten", self.units)

    def _speed(self, track: _Track) -> float | None:
        """A track's smoothed speed in the reported unit: km/h, or heights (of its own box) per second."""
        if track.velocity is None or track.detection is None:
            return None
        speed = float(np.linalg.norm(track.velocity))
        if self._ground is not None:
            return speed * MS_TO_KMH
        return speed / max(track.detection.height, 1.0)

    def _speed_native(self, track: _Track) -> float:
        """Speed in m/s, or heights of its own box per second, for the moving/path thresholds."""
        if track.velocity is None or track.detection is None:
            return 0.0
        speed = float(np.linalg.norm(track.velocity))
        return speed if self._ground is not None else speed / max(track.detection.height, 1.0)

    def speeds(self) -> dict[int, float]:
        """The latest smoothed speed of every track with a velocity (km/h calibrated, heights/s otherwise)."""
        out: dict[int, float] = {}
        for track_id, track in self._tracks.items():
            speed = self._speed(track)
            if speed is not None:
                out[track_id] = speed
        return out

    def _positions(self, detections: Sequence[Detection], width: int, height: int) -> FloatArray:
        if self._ground is not None:
            points = [bottom_centre(d.bbox, width, height) for d in detections]
            return self._ground.to_ground(points)
        return np.asarray([((d.bbox[0] + d.bbox[2]) / 2, d.bbox[3]) for d in detections],
                          dtype=np.float64).reshape(-1, 2)

    def _to_pixels(self, point: FloatArray, width: int, height: int) -> list[float]:
        if self._ground is not None:
            norm = self._ground.to_image([(float(point[0]), float(point[1]))])[0]
            return [float(norm[0]) * width, float(norm[1]) * height]
        return [float(point[0]), float(point[1])]

    def _radius(self, detection: Detection) -> float:
        if self._ground is not None:
            return RADIUS_BY_CLASS.get(detection.cls, CAR_RADIUS)
        return detection.width / 2

    def update(self, ts: float, detections: Sequence[Detection], width: int,
               height: int) -> dict[tuple[int, int], ConflictFacts]:
        """Add one frame's detections (timestamp `ts`, seconds) and return the metrics of every pair of tracked
        detections with a motor vehicle, keyed by the sorted pair of track ids."""
        # forget tracks unseen for two windows first: a road user seen again after that starts a new history
        stale = [tid for tid, track in self._tracks.items() if track.last_seen < ts - 2 * self.window]
        for tid in stale:
            del self._tracks[tid]
        if stale:
            gone = set(stale)
            self._min_distance = {k: v for k, v in self._min_distance.items() if not gone & set(k)}
        current: dict[int, Detection] = {}
        for det in detections:
            if det.track_id is not None and det.track_id not in current:
                current[det.track_id] = det
        if current:
            positions = self._positions(list(current.values()), width, height)
            for (track_id, det), xy in zip(current.items(), positions, strict=True):
                track = self._tracks.setdefault(track_id, _Track())
                if self._teleported(track, ts, xy, det):  # a new road user under an old id: start afresh
                    track = self._tracks[track_id] = _Track()
                    self._min_distance = {k: v for k, v in self._min_distance.items() if track_id not in k}
                track.detection = det
                track.last_seen = ts
                track.add(ts, xy, self.window)

        ids = sorted(current)
        out: dict[tuple[int, int], ConflictFacts] = {}
        for i, id_a in enumerate(ids):
            for id_b in ids[i + 1:]:
                facts = self._pair(id_a, id_b, width, height)
                if facts is not None:
                    out[(id_a, id_b)] = facts
        return out

    def _teleported(self, track: _Track, ts: float, xy: FloatArray, det: Detection) -> bool:
        """Whether the track's new position is out of physical reach of its last one: its id now names another
        road user (a tracker reusing an id, a video file starting over), and its history would turn the jump into
        a speed of hundreds of km/h. Out of reach: faster than `MAX_SPEED`, or, once it has a velocity, further
        from where that velocity predicts than `JUMP_SLACK` plus what `MAX_ACCELERATION` allows."""
        if not track.history or ts <= track.history[-1][0]:
            return False
        then, x, y = track.history[-1]
        dt = ts - then
        scale = 1.0 if self._ground is not None else max(det.height, 1.0)  # metres, or pixels per height
        metric = self._ground is not None
        step = math.hypot(float(xy[0]) - x, float(xy[1]) - y) / scale
        if step / dt > (MAX_SPEED if metric else MAX_RELATIVE_SPEED):
            return True
        if track.velocity is None:
            return False
        predicted = np.array([x, y]) + track.velocity * dt
        deviation = float(np.hypot(*(np.asarray(xy, dtype=np.float64) - predicted))) / scale
        slack, acceleration = (JUMP_SLACK, MAX_ACCELERATION) if metric else (JUMP_SLACK_RELATIVE,
                                                                              MAX_ACCELERATION_RELATIVE)
        return deviation > slack + 0.5 * acceleration * dt * dt

    def _pair(self, id_a: int, id_b: int, width: int, height: int) -> ConflictFacts | None:
        ta_, tb_ = self._tracks[id_a], self._tracks[id_b]
        det_a, det_b = ta_.detection, tb_.detection
        assert det_a is not None and det_b is not None
        kind = conflict_type(det_a.cls, det_b.cls)
        if kind is None:
            return None
        units = self.units
        # relative units: pixels divided by the smaller box height
        scale = 1.0 if self._ground is not None else 1.0 / max(min(det_a.height, det_b.height), 1.0)
        d = tb_.position - ta_.position
        dist_native = float(np.linalg.norm(d))
        distance = dist_native * scale
        key = (id_a, id_b)
        min_distance = min(self._min_distance.get(key, math.inf), distance)
        self._min_distance[key] = min_distance

        ttc: float | None = None
        pet: float | None = None
        closing: float | None = None
        point: list[float] | None = None
        if ta_.velocity is not None and tb_.velocity is not None:
            w = tb_.velocity - ta_.velocity
            if dist_native > 0:
                closing = -float(d @ w) / dist_native * (MS_TO_KMH if self._ground is not None else scale)
            if self._parties_move(det_a, ta_, det_b, tb_, kind):
                radius = self._radius(det_a) + self._radius(det_b)
                ttc = time_to_collision(d, w, radius, self.thresholds.horizon)
                have_paths = min(self._speed_native(ta_), self._speed_native(tb_)) >= PATH_SPEED[units]
                crossing = crossing_times(ta_.position, ta_.velocity, tb_.position, tb_.velocity, 0.0,
                                          self.thresholds.horizon) if have_paths else None
                if crossing is not None:
                    t_a, t_b, at = crossing
                    pet = abs(t_a - t_b)
                    point = self._to_pixels(at, width, height)
        if point is None:
            point = self._to_pixels((ta_.position + tb_.position) / 2, width, height)
        speeds = {str(tid): round(s, 3) for tid, tr in ((id_a, ta_), (id_b, tb_))
                  if (s := self._speed(tr)) is not None}
        return ConflictFacts(conflictType=kind, trackIds=[id_a, id_b], classes=[det_a.cls, det_b.cls], ttc=ttc,
                             pet=pet, distance=distance, minDistance=min_distance, relativeSpeed=closing,
                             speeds=speeds, units=units, severity=severity(ttc, pet, self.thresholds),
                             point=point)

    def _parties_move(self, det_a: Detection, ta_: _Track, det_b: Detection, tb_: _Track,
                      kind: ConflictType) -> bool:
        """A parked vehicle is no party to a near miss: with a pedestrian the vehicle must move; between two
        vehicles (a bicycle counts as one) at least one must."""
        threshold = MOVING_SPEED[self.units]
        moving = {id(det): self._speed_native(tr) >= threshold for det, tr in ((det_a, ta_), (det_b, tb_))}
        if kind == "vehicle-pedestrian":
            return all(moving[id(det)] for det in (det_a, det_b) if det.cls not in PEDESTRIANS)
        return any(moving.values())

