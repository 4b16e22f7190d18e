"""Grouping, with expectations worked out by hand."""

from __future__ import annotations

import pytest

from traffic_celery.vision.geometry import box_gap
from traffic_celery.vision.grouping import group_detections, relative_gap
from traffic_celery.vision.types import Detection


def det(i: int, cls: str, x1: float, y1: float, x2: float, y2: float) -> Detection:
    return Detection(track_id=i, cls=cls, confidence=0.9, bbox=(x1, y1, x2, y2))


def scaled(d: Detection, k: float) -> Detection:
    return Detection(d.track_id, d.cls, d.confidence, tuple(v * k for v in d.bbox))  # type: ignore[arg-type]


# Two pedestrians 100 px tall, 20 px apart side by side; a car 60 px to the right of the second one
# (car 50 px tall, so gap/height = 60/50 = 1.2); a third pedestrian far away.
SCENE = [
    det(0, "person", 100, 100, 140, 200),
    det(1, "person", 160, 100, 200, 200),
    det(2, "car", 260, 150, 360, 200),
    det(3, "person", 600, 100, 640, 200),
]


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (5, 5, 20, 20), 0.0),      # overlap
    ((0, 0, 10, 10), (13, 0, 20, 10), 3.0),     # side by side
    ((0, 0, 10, 10), (13, 14, 20, 20), 5.0),    # diagonal: 3-4-5
])
def test_box_gap(a, b, expected):
    assert box_gap(a, b) == pytest.approx(expected)


def test_relative_gap_uses_the_smaller_height():
    assert relative_gap(SCENE[1], SCENE[2]) == pytest.approx(60 / 50)


def test_link_factor_decides_membership():
    groups = group_detections(SCENE, link_factor=1.0)
    assert [[m.track_id for m in g.members] for g in groups] == [[0, 1]]
    groups = group_detections(SCENE, link_factor=1.3)
    assert [[m.track_id for m in g.members] for g in groups] == [[0, 1, 2]]


def test_group_features_are_hand_checked():
    (group,) = group_detections(SCENE, link_factor=1.3)
    f = group.features
    assert f.object_count == 3
    assert f.class_counts == {"car": 1, "person": 2}
    assert f.min_gap == pytest.approx(0.2)                      # 20 px between the pedestrians / 100 px
    assert f.pedestrian_vehicle_gap == pytest.approx(1.2)       # 60 px / car height 50 px
    assert group.bbox == (100, 100, 360, 200)
    assert group.classes == ["car", "person"]


def test_no_vehicle_means_no_pedestrian_vehicle_gap():
    (group,) = group_detections(SCENE[:2])
    assert group.features.pedestrian_vehicle_gap is None


def test_singletons_are_not_groups_unless_asked():
    assert group_detections([SCENE[3]]) == []
    assert len(group_detections([SCENE[3]], min_size=1)) == 1


@pytest.mark.parametrize("k", [0.5, 2.0, 3.7])
def test_same_scene_at_another_resolution_gives_the_same_groups(k):
    base = group_detections(SCENE, link_factor=1.3)
    other = group_detections([scaled(d, k) for d in SCENE], link_factor=1.3)
    assert [[m.track_id for m in g.members] for g in other] == [[m.track_id for m in g.members] for g in base]
    assert other[0].features.min_gap == pytest.approx(base[0].features.min_gap)


def test_group_order_is_left_to_right():
    scene = [det(0, "person", 500, 0, 520, 50), det(1, "person", 525, 0, 545, 50),
             det(2, "person", 10, 0, 30, 50), det(3, "car", 35, 0, 95, 40)]
    groups = group_detections(scene)
    assert [g.group_index for g in groups] == [0, 1]
    assert [m.track_id for m in groups[0].members] == [2, 3]


def group_of(*ids: int):
    from traffic_celery.vision.types import GroupFeatures, TrafficGroup

    members = tuple(det(i, "person", 10 * i, 0, 10 * i + 5, 20) for i in ids)
    return TrafficGroup("tmp", 0, members, (0, 0, 1, 1), GroupFeatures(len(ids), {"person": len(ids)}, 0.1, None))


def test_group_ids_follow_members_not_positions():
    from traffic_celery.vision.grouping import GroupIds

    ids = GroupIds()
    first = [g.group_id for g in ids.assign([group_of(1, 2), group_of(7, 8, 9)])]
    assert first == ["g1", "g2"]
    # next frame: the order changed, one member left a group, another joined; a new group appeared
    second = [g.group_id for g in ids.assign([group_of(20, 21), group_of(8, 9), group_of(1, 2, 3)])]
    assert second == ["g3", "g2", "g1"]
    # a group sharing less than half of the smaller side is a new group
    third = [g.group_id for g in ids.assign([group_of(1, 30, 31, 32)])]
    assert third == ["g4"]
