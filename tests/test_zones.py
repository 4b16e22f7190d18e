"""Zones, masks and the ground-plane calibration: membership by bottom-centre, validation of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from traffic_celery.safety.calibration import Calibration, GroundPlane
from traffic_celery.safety.zones import Zone, ZoneSet, bottom_centre

SQUARE = [(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]
W, H = 1000, 500


def box_at(x: float, y: float) -> tuple[float, float, float, float]:
    """A 40 x 80 px box whose bottom-centre is the normalised point (x, y) of a 1000 x 500 frame."""
    return (x * W - 20, y * H - 80, x * W + 20, y * H)


@pytest.mark.parametrize(("point", "inside"), [
    ((0.4, 0.4), True),  # inside
    ((0.1, 0.4), False),  # left of it
    ((0.4, 0.7), False),  # below it
    ((0.2, 0.4), True),  # on the left edge
    ((0.4, 0.6), True),  # on the bottom edge
    ((0.6, 0.6), True),  # on a vertex
    ((0.2, 0.2), True),  # on another vertex
    ((0.6001, 0.4), False),  # just outside an edge
])
def test_zone_membership_by_bottom_centre(point: tuple[float, float], inside: bool) -> None:
    zones = ZoneSet([Zone(name="crosswalk", points=SQUARE)])
    masked, names = zones.of_box(box_at(*point), W, H)
    assert bottom_centre(box_at(*point), W, H) == pytest.approx(point)
    assert masked is False
    assert names == (["crosswalk"] if inside else [])


@pytest.mark.parametrize(("point", "masked", "names"), [
    ((0.3, 0.3), False, ["a"]),
    ((0.5, 0.5), False, ["a", "b"]),  # a and b overlap here, in the order given
    ((0.7, 0.7), False, ["b"]),
    ((0.85, 0.85), True, ["b"]),  # a mask inside zone b: masked, and still in b
    ((0.95, 0.1), False, []),
])
def test_overlapping_zones_and_masks(point: tuple[float, float], masked: bool, names: list[str]) -> None:
    zones = ZoneSet([
        Zone(name="a", points=[(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]),
        Zone(name="b", points=[(0.4, 0.4), (0.9, 0.4), (0.9, 0.9), (0.4, 0.9)]),
        Zone(name="parking", kind="mask", points=[(0.8, 0.8), (0.9, 0.8), (0.9, 0.9), (0.8, 0.9)]),
    ])
    assert bool(zones)
    assert zones.of_box(box_at(*point), W, H) == (masked, names)
    assert zones.masked(point) is masked
    assert zones.zones_at(point) == names


def test_empty_zone_set() -> None:
    zones = ZoneSet()
    assert not zones
    assert zones.of_box(box_at(0.5, 0.5), W, H) == (False, [])


@pytest.mark.parametrize(("points", "message"), [
    ([(0.1, 0.1), (0.5, 0.5)], "at least 3"),
    ([(0.1, 0.1), (0.5, 0.5), (0.5, 0.1), (0.1, 0.5)], "not simple"),  # a bow-tie
    ([(0.1, 0.1), (1.2, 0.1), (0.5, 0.5)], "outside the frame"),
    ([(0.1, 0.1), (0.5, -0.01), (0.5, 0.5)], "outside the frame"),
    ([(0.1, 0.1), (0.3, 0.3), (0.5, 0.5)], "no area"),  # collinear
    ([(0.1, 0.1), (0.1, 0.1), (0.1, 0.1)], "no area"),
])
def test_bad_polygons(points: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Zone(name="bad", points=points)


@pytest.mark.parametrize("name", ["", "-starts-with-dash", "x" * 49, "semi;colon"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        Zone(name=name, points=SQUARE)


def test_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique; repeated: a"):
        ZoneSet([Zone(name="a", points=SQUARE), Zone(name="a", kind="mask", points=SQUARE)])


RECT_IMAGE = [(0.25, 0.95), (0.75, 0.95), (0.62, 0.35), (0.38, 0.35)]
RECT_WORLD = [(0.0, 0.0), (12.0, 0.0), (12.0, 20.0), (0.0, 20.0)]


@pytest.mark.parametrize(("image", "world", "message"), [
    ([(0.25, 0.95), (0.62, 0.35), (0.75, 0.95), (0.38, 0.35)], RECT_WORLD, "image points cross over"),
    (RECT_IMAGE, [(0.0, 0.0), (12.0, 20.0), (12.0, 0.0), (0.0, 20.0)], "world points cross over"),
    ([(0.1, 0.1), (0.2, 0.2), (0.3, 0.3), (0.1, 0.3)], RECT_WORLD, "three of the four image points are on one line"),
    ([(0.1, 0.1), (0.1001, 0.1), (0.1001, 0.1001), (0.1, 0.1001)], RECT_WORLD, "image points enclose almost no area"),
    (RECT_IMAGE, [(0.0, 0.0), (5.0, 0.0), (10.0, 0.0), (0.0, 0.01)], "world points enclose almost no area"),
    ([(0.25, 0.95), (0.75, 1.05), (0.62, 0.35), (0.38, 0.35)], RECT_WORLD, "outside the frame"),
    (RECT_IMAGE[:3], RECT_WORLD[:3], "at least 4"),
])
def test_bad_calibrations(image: list[tuple[float, float]], world: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Calibration(image=image, world=world)


def test_ground_plane_round_trip() -> None:
    ground = GroundPlane(Calibration(image=RECT_IMAGE, world=RECT_WORLD))
    assert ground.to_ground(RECT_IMAGE) == pytest.approx(np.asarray(RECT_WORLD), abs=1e-4)
    assert ground.to_image(RECT_WORLD) == pytest.approx(np.asarray(RECT_IMAGE), abs=1e-6)
    points = np.asarray([(6.0, 10.0), (1.0, 35.0), (11.5, -1.0)])
    back = ground.to_ground(ground.to_image(points))
    assert back == pytest.approx(points, abs=1e-5)  # the homography is solved from float32 points
    # a real perspective: equal steps along the road are shorter in the image the further they are
    steps = np.diff(ground.to_image([(6.0, 0.0), (6.0, 10.0), (6.0, 20.0)])[:, 1])
    assert abs(steps[0]) > abs(steps[1]) * 1.3
    assert ground.to_ground([]).shape == (0, 2) and ground.to_image([]).shape == (0, 2)
