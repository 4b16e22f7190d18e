"""Synthetic traffic scenes with known ground truth, rendered as video files.

The near-miss metrics of :mod:`traffic_celery.safety.conflicts` cannot be checked on real footage: nobody knows
the true speeds and times to collision there. Here road users move at constant velocity on a ground plane (metres)
seen through a fixed perspective calibration, so every metric has a closed-form truth (:meth:`Scene.truth`),
computed from the actor definitions alone. Each road user is drawn as a filled rectangle of its palette colour
(:data:`traffic_celery.vision.colour.PALETTE`, found again by
:class:`~traffic_celery.vision.colour.ColourDetector`): a billboard standing on its ground point, whose
bottom-centre is the projection of that point and whose size is the class's width and height times the local
scale of the homography there (pixels per metre across the view). The billboard's width is twice the collision
radius of :mod:`~traffic_celery.safety.conflicts`, so half a box width (the uncalibrated radius) is the same disc.

Run ``python -m traffic_celery.safety.synthetic OUT.avi [--scene conflict|calm] [--seconds S]`` to write one.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from traffic_celery.safety.calibration import Calibration, GroundPlane
from traffic_celery.safety.conflicts import MOTOR_VEHICLES, MOVING_SPEED, RADIUS_BY_CLASS
from traffic_celery.vision.colour import PALETTE
from traffic_celery.vision.types import BBox

logger = logging.getLogger(__name__)

WIDTH, HEIGHT = 1280, 720
ROAD_GREY = (105, 105, 105)  # BGR; neither it nor the markings are near a palette colour
VERGE = (80, 95, 85)
MARKING = (235, 235, 235)
KMH = 3.6

# Heights of the billboards, metres (widths are twice the collision radius).
HEIGHT_BY_CLASS: dict[str, float] = {"person": 1.7, "bicycle": 1.7, "motorcycle": 1.5, "car": 1.5, "bus": 3.2,
                                     "truck": 3.2, "train": 3.8}

# The calibrated "road area": a 12 m (across) x 20 m (ahead) rectangle. Seen in perspective from a camera looking
# along the road (the far edge is narrower: a real homography, not an affine map), ...
ROAD_WORLD: list[tuple[float, float]] = [(0.0, 0.0), (12.0, 0.0), (12.0, 20.0), (0.0, 20.0)]
PERSPECTIVE = Calibration(image=[(0.25, 0.95), (0.75, 0.95), (0.62, 0.35), (0.38, 0.35)], world=ROAD_WORLD)
# ... or from straight above (25 px per metre both ways, the road running left to right), where image distances
# are proportional to ground distances and an uncalibrated measure equals the calibrated one up to scale.
TOP_DOWN_SCALE = 25.0  # px/m
TOP_DOWN = Calibration(
    image=[((40 + y * TOP_DOWN_SCALE) / WIDTH, (360 + (x - 6) * TOP_DOWN_SCALE) / HEIGHT) for x, y in ROAD_WORLD],
    world=ROAD_WORLD)

View = Literal["perspective", "top-down"]


@dataclass(frozen=True)
class Actor:
    """A road user moving at constant velocity on the ground: position(t) = start + velocity * t (metres)."""

    track_id: int  # a PALETTE entry's id: its colour and class
    start: tuple[float, float]
    velocity: tuple[float, float]

    @property
    def cls(self) -> str:
        return next(cls for tid, cls, _ in PALETTE if tid == self.track_id)

    @property
    def colour(self) -> tuple[int, int, int]:
        return next(colour for tid, _, colour in PALETTE if tid == self.track_id)

    @property
    def speed(self) -> float:
        """m/s"""
        return math.hypot(*self.velocity)

    def position(self, t: float) -> tuple[float, float]:
        return (self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t)


@dataclass(frozen=True)
class Truth:
    """The hand-computed metrics of a scene's pair (its first two actors) at one time."""

    speeds: dict[int, float]  # track id -> km/h
    ttc: float | None  # s
    pet: float | None  # s
    distance: float  # centre distance, m
    closing_speed: float  # m/s, > 0 closing


@dataclass(frozen=True)
class Scene:
    """Actors on the ground plane of a calibration, rendered at width x height pixels."""

    name: str
    calibration: Calibration
    actors: tuple[Actor, ...]
    duration: float = 6.0
    width: int = WIDTH
    height: int = HEIGHT

    def ground(self) -> GroundPlane:
        return GroundPlane(self.calibration)

    # --- the truth, in closed form from the actor definitions ---------------------------------------------------

    def _pair(self) -> tuple[Actor, Actor]:
        if len(self.actors) < 2:
            raise ValueError(f"scene {self.name!r} has no pair")
        return self.actors[0], self.actors[1]

    def truth(self, t: float, horizon: float = 5.0) -> Truth:
        """The metrics of the first two actors at time t: TTC with discs of the class radii, PET at the crossing
        of their straight paths (paths at 20 degrees or more, both within the horizon, not both passed)."""
        a, b = self._pair()
        (ax, ay), (bx, by) = a.position(t), b.position(t)
        dx, dy = bx - ax, by - ay
        wx, wy = b.velocity[0] - a.velocity[0], b.velocity[1] - a.velocity[1]
        distance = math.hypot(dx, dy)
        closing = -(dx * wx + dy * wy) / distance if distance else 0.0
        vehicles = [x for x in (a, b) if x.cls in MOTOR_VEHICLES or x.cls == "bicycle"]
        moving = all(v.speed >= MOVING_SPEED["metric"] for v in vehicles if v.cls in MOTOR_VEHICLES)
        ttc: float | None = None
        pet: float | None = None
        if moving:
            radius = RADIUS_BY_CLASS[a.cls] + RADIUS_BY_CLASS[b.cls]
            # |d + w s| = R:  (w.w) s^2 + 2 (d.w) s + (d.d - R^2) = 0, the smaller root
            qa, qb, qc = wx * wx + wy * wy, dx * wx + dy * wy, distance * distance - radius * radius
            if qc <= 0:
                ttc = 0.0
            elif qa > 0 and qb < 0 and qb * qb - qa * qc >= 0:
                s = (-qb - math.sqrt(qb * qb - qa * qc)) / qa
                ttc = s if s <= horizon else None
            # crossing of the paths, by Cramer's rule on  a0 + va ta = b0 + vb tb  (absolute times)
            (avx, avy), (bvx, bvy) = a.velocity, b.velocity
            det = -avx * bvy + avy * bvx
            sine = abs(det) / (a.speed * b.speed) if a.speed and b.speed else 0.0
            if sine >= math.sin(math.radians(20)):
                ex, ey = b.start[0] - a.start[0], b.start[1] - a.start[1]
                ta = (-ex * bvy + ey * bvx) / det - t
                tb = (avx * ey - avy * ex) / det - t
                if abs(ta) <= horizon and abs(tb) <= horizon and not (ta < 0 and tb < 0):
                    pet = abs(ta - tb)
        return Truth(speeds={x.track_id: x.speed * KMH for x in (a, b)}, ttc=ttc, pet=pet, distance=distance,
                     closing_speed=closing)

    def min_distance(self, t0: float, t1: float) -> float:
        """The smallest centre distance (m) of the pair between t0 and t1, in closed form."""
        a, b = self._pair()
        (ax, ay), (bx, by) = a.position(t0), b.position(t0)
        dx, dy = bx - ax, by - ay
        wx, wy = b.velocity[0] - a.velocity[0], b.velocity[1] - a.velocity[1]
        ww = wx * wx + wy * wy
        s = 0.0 if ww == 0 else min(max(-(dx * wx + dy * wy) / ww, 0.0), t1 - t0)
        return math.hypot(dx + wx * s, dy + wy * s)

    # --- drawing ------------------------------------------------------------------------------------------------

    def _to_pixels(self, points: list[tuple[float, float]]) -> NDArray[np.float64]:
        norm = self.ground().to_image(points)
        return norm * np.asarray([self.width, self.height], dtype=np.float64)

    def boxes(self, t: float) -> dict[int, BBox]:
        """Each actor's rectangle as drawn at time t (pixels, x2/y2 exclusive: the box a detector reports)."""
        out: dict[int, BBox] = {}
        for actor in self.actors:
            x, y = actor.position(t)
            foot, left, right = self._to_pixels([(x, y), (x - 0.5, y), (x + 0.5, y)])
            scale = float(np.linalg.norm(right - left))  # px per metre across the view, here
            half = RADIUS_BY_CLASS[actor.cls] * scale
            tall = HEIGHT_BY_CLASS[actor.cls] * scale
            u, v = float(foot[0]), float(foot[1])
            out[actor.track_id] = (float(round(u - half)), float(round(v - tall)), float(round(u + half)),
                                   float(round(v)))
        return out

    def _draw_order(self, boxes: dict[int, BBox]) -> list[int]:
        return sorted(boxes, key=lambda tid: (boxes[tid][3], tid))  # painter's: farther (higher foot) first

    def occluded(self, t: float) -> set[int]:
        """Actors whose rectangle another one, drawn over it, overlaps at time t (their detected box is off)."""
        boxes = self.boxes(t)
        order = self._draw_order(boxes)
        hidden: set[int] = set()
        for i, below in enumerate(order):
            b = boxes[below]
            for above in order[i + 1:]:
                o = boxes[above]
                if o[0] < b[2] and b[0] < o[2] and o[1] < b[3] and b[1] < o[3]:
                    hidden.add(below)
        return hidden

    def background(self) -> NDArray[np.uint8]:
        frame = np.full((self.height, self.width, 3), VERGE, dtype=np.uint8)
        road = self._to_pixels([(0.0, -40.0), (12.0, -40.0), (12.0, 200.0), (0.0, 200.0)])
        cv2.fillPoly(frame, [np.round(road).astype(np.int32)], ROAD_GREY)
        for x in (0.5, 11.5):  # edge lines
            p = np.round(self._to_pixels([(x, -40.0), (x, 200.0)])).astype(np.int32)
            cv2.line(frame, (int(p[0][0]), int(p[0][1])), (int(p[1][0]), int(p[1][1])), MARKING, 2, cv2.LINE_AA)
        for y in range(-40, 200, 6):  # dashed centre line
            p = np.round(self._to_pixels([(4.0, float(y)), (4.0, y + 3.0)])).astype(np.int32)
            cv2.line(frame, (int(p[0][0]), int(p[0][1])), (int(p[1][0]), int(p[1][1])), MARKING, 2, cv2.LINE_AA)
        return frame

    def draw(self, t: float, background: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
        """The frame at time t (BGR)."""
        frame = (self.background() if background is None else background).copy()
        boxes = self.boxes(t)
        colours = {a.track_id: a.colour for a in self.actors}
        for tid in self._draw_order(boxes):
            x1, y1, x2, y2 = (int(v) for v in boxes[tid])
            if x2 > x1 and y2 > y1:
                cv2.rectangle(frame, (x1, y1), (x2 - 1, y2 - 1), colours[tid], thickness=-1)
        return frame


def conflict_scene(view: View = "perspective") -> Scene:
    """A car at 36 km/h (10 m/s) driving away from the camera and a pedestrian at 1.5 m/s crossing its path from
    the left: the car passes the crossing point (6, 30) at t = 3.0 s, the pedestrian reaches it at t = 3.75 s
    (PET 0.75 s, severity medium by the PET). Their centres come within 1.11 m, inside the 1.3 m of the two discs:
    they touch at t = 2.95 s, so the TTC falls under 1.5 s at t = 1.45 s and under 1 s (high) at 1.95 s.
    (A PET of 0.75 s rather than 0.8 s keeps the encounter clearly on a collision course: at 0.8 s the centres
    would pass 1.19 m apart, 0.11 m inside the discs, and an uncalibrated radius off by a pixel misses it.)"""
    car = Actor(1, start=(6.0, 0.0), velocity=(0.0, 10.0))
    person = Actor(2, start=(6.0 - 1.5 * 3.75, 30.0), velocity=(1.5, 0.0))
    calibration = PERSPECTIVE if view == "perspective" else TOP_DOWN
    # top-down, the car leaves the frame at about 4.6 s
    return Scene(name=f"conflict-{view}", calibration=calibration, actors=(car, person),
                 duration=6.0 if view == "perspective" else 4.5)


def calm_scene(view: View = "perspective") -> Scene:
    """A car (36 km/h) and a pedestrian (1.5 m/s) on parallel paths 7 m apart: never close, never crossing."""
    car = Actor(3, start=(3.0, 0.0), velocity=(0.0, 10.0))
    person = Actor(6, start=(10.0, 5.0), velocity=(0.0, 1.5))
    calibration = PERSPECTIVE if view == "perspective" else TOP_DOWN
    return Scene(name=f"calm-{view}", calibration=calibration, actors=(car, person),
                 duration=6.0 if view == "perspective" else 4.5)


def render(scene: Scene, path: str | Path, fps: float = 10, seconds: float | None = None) -> None:
    """Write the scene as an MJPEG .avi at high quality (frame i is time i / fps); raise if it does not read back."""
    seconds = scene.duration if seconds is None else seconds
    frames = int(round(seconds * fps))
    fourcc = cv2.VideoWriter.fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, fourcc, fps, (scene.width, scene.height),
                             [cv2.VIDEOWRITER_PROP_QUALITY, 100])
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}: OpenCV has no MJPG writer for it (use a .avi path)")
    background = scene.background()
    try:
        for i in range(frames):
            writer.write(scene.draw(i / fps, background))
    finally:
        writer.release()
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
        if not ok or frame is None or frame.shape[:2] != (scene.height, scene.width):
            raise RuntimeError(f"the video written to {path} does not read back")
    finally:
        capture.release()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render a synthetic traffic scene with known ground truth.")
    parser.add_argument("out", type=Path, help="output video, .avi (MJPEG)")
    parser.add_argument("--scene", choices=["conflict", "calm"], default="conflict")
    parser.add_argument("--view", choices=["perspective", "top-down"], default="perspective")
    parser.add_argument("--seconds", type=float, default=None, help="length (default: the scene's)")
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scene = conflict_scene(args.view) if args.scene == "conflict" else calm_scene(args.view)
    seconds = scene.duration if args.seconds is None else args.seconds
    render(scene, args.out, fps=args.fps, seconds=seconds)
    logger.info("wrote %s: scene %s, %.1f s at %g fps, %dx%d", args.out, scene.name, seconds, args.fps,
                scene.width, scene.height)


if __name__ == "__main__":
    main()
