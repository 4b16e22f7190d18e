"""When the LLM is asked (appear, members change, worsen, reassess; debounced) and the motion features it uses."""

from __future__ import annotations

import pytest

from traffic_celery.vision.grouping import group_detections
from traffic_celery.vision.motion import Motion
from traffic_celery.vision.scheduling import AssessmentScheduler, worsened
from traffic_celery.vision.types import Detection, GroupFeatures, TrafficGroup


def person(tid, x, y=100.0, h=100.0):
    return Detection(tid, "person", 0.9, (x, y, x + h * 0.4, y + h))


def car(tid, x, y=100.0, h=100.0):
    return Detection(tid, "car", 0.9, (x, y, x + h * 2, y + h))


def features(pv=None, gap=0.5, ttc=None):
    return GroupFeatures(2, {"car": 1, "person": 1}, gap, pv, None if ttc is None else 0.5, ttc)


def group(gid, ids, f=None):
    members = tuple(person(i, 10.0 * i) for i in ids)
    return TrafficGroup(gid, 0, members, (0, 0, 1, 1), f or features(pv=0.8, gap=0.8))


def test_a_steady_group_is_asked_once_then_every_reassess_interval():
    s = AssessmentScheduler(reassess_interval=10, min_interval=2)
    reasons = [[r for _, r in s.due([group("g1", [1, 2])], t)] for t in (0, 0.5, 5, 9.9, 10, 15, 20.1)]
    assert reasons == [["appeared"], [], [], [], ["reassess"], [], ["reassess"]]
    assert s.calls == {"appeared": 1, "reassess": 2} and s.saved == 4


def test_member_change_is_asked_but_not_more_often_than_the_minimum_interval():
    s = AssessmentScheduler(reassess_interval=60, min_interval=2)
    assert s.due([group("g1", [1, 2])], 0)[0][1] == "appeared"
    assert s.due([group("g1", [1, 2, 3])], 1) == []  # debounced
    assert [r for _, r in s.due([group("g1", [1, 2, 3])], 2)] == ["members_changed"]
    assert s.due([group("g1", [1, 2, 3])], 3) == []


def test_a_new_group_is_never_delayed_and_a_gone_group_is_forgotten():
    s = AssessmentScheduler(reassess_interval=60, min_interval=5)
    s.due([group("g1", [1, 2])], 0)
    assert [(g.group_id, r) for g, r in s.due([group("g1", [1, 2]), group("g2", [3, 4])], 0.1)] == \
        [("g2", "appeared")]
    s.due([group("g2", [3, 4])], 0.2)  # g1 is gone
    assert [r for _, r in s.due([group("g1", [1, 2])], 0.3)] == ["appeared"]


@pytest.mark.parametrize("before, now, expected", [
    (features(pv=1.0), features(pv=0.6), True),       # pedestrian 40% closer to the vehicle
    (features(pv=1.0), features(pv=0.8), False),      # 20%: under the threshold
    (features(pv=0.1), features(pv=0.06), False),     # 40% but 0.04 heights: detector noise
    (features(pv=None), features(pv=0.9), True),      # a pedestrian joined a vehicle group
    (features(gap=1.0), features(gap=0.5), True),     # two vehicles closing
    (features(gap=0.5), features(gap=0.9), False),    # moving apart is not worse
    (features(ttc=None), features(ttc=3.0), True),    # now heading to contact within 5 s
    (features(ttc=None), features(ttc=9.0), False),   # closing, but not soon
    (features(ttc=4.0), features(ttc=2.0), True),     # contact twice as soon
    (features(ttc=3.0), features(ttc=2.5), False),
])
def test_worsened(before, now, expected):
    assert worsened(before, now, ratio=0.3, ttc_horizon=5.0) is expected


def test_worsening_group_is_asked_again():
    s = AssessmentScheduler(reassess_interval=60, min_interval=1)
    s.due([group("g1", [1, 2], features(pv=1.0))], 0)
    assert s.due([group("g1", [1, 2], features(pv=0.9))], 2) == []
    assert [r for _, r in s.due([group("g1", [1, 2], features(pv=0.5))], 3)] == ["worsened"]
    assert s.due([group("g1", [1, 2], features(pv=0.45))], 5) == []  # compared with the last assessment


def test_approach_speed_and_time_to_contact_from_the_tracks():
    motion = Motion(window=1.0)
    # a person walks towards a parked car: gap 2.0 heights, then 1.5 heights half a second later
    motion.observe(0.0, [car(1, 0), person(2, 400)])
    now = [car(1, 0), person(2, 350)]
    groups = group_detections(now, link_factor=3.0, motion=motion, ts=0.5)
    f = groups[0].features
    assert f.pedestrian_vehicle_gap == pytest.approx(1.5)
    assert f.approach_speed == pytest.approx(1.0)  # heights per second
    assert f.time_to_contact == pytest.approx(1.5)


def test_motion_features_do_not_depend_on_resolution():
    def scene(k, x):
        return [car(1, 0, h=100 * k), Detection(2, "person", 0.9, (x * k, 100 * k, (x + 40) * k, 200 * k))]

    results = []
    for k in (1.0, 2.5):
        motion = Motion(window=1.0)
        motion.observe(0.0, scene(k, 400))
        results.append(group_detections(scene(k, 300), link_factor=3.0, motion=motion, ts=1.0)[0].features)
    assert results[0].approach_speed == pytest.approx(results[1].approach_speed)
    assert results[0].time_to_contact == pytest.approx(results[1].time_to_contact)


def test_moving_apart_has_no_time_to_contact_and_untracked_objects_no_speed():
    motion = Motion(window=1.0)
    motion.observe(0.0, [car(1, 0), person(2, 300)])
    f = group_detections([car(1, 0), person(2, 350)], link_factor=3.0, motion=motion, ts=0.5)[0].features
    assert f.approach_speed == pytest.approx(-1.0) and f.time_to_contact is None
    f = group_detections([car(1, 0), person(None, 250)], link_factor=3.0, motion=motion, ts=1.0)[0].features
    assert f.approach_speed is None and f.time_to_contact is None


def test_motion_uses_the_oldest_frame_in_its_window():
    motion = Motion(window=1.0)
    for t, x in [(0.0, 600), (0.5, 500), (1.0, 400), (1.5, 300)]:
        motion.observe(t, [car(1, 0), person(2, x)])
    # at t=2.0 the window reaches back to t=1.0 (gap 2.0); now the gap is 1.0: 1 height/s
    f = group_detections([car(1, 0), person(2, 300)], link_factor=3.0, motion=motion, ts=2.0)[0].features
    assert f.approach_speed == pytest.approx(1.0)


def test_groups_without_a_vehicle_are_not_asked_unless_configured():
    walkers = TrafficGroup("g1", 0, (person(1, 0), person(2, 50)), (0, 0, 1, 1), features(gap=0.2))
    mixed = TrafficGroup("g2", 1, (person(3, 0), car(4, 60)), (0, 0, 1, 1), features(pv=0.2, gap=0.2))
    s = AssessmentScheduler(pedestrian_groups=False)
    assert [g.group_id for g, _ in s.due([walkers, mixed], 0)] == ["g2"] and s.saved == 1
    assert [g.group_id for g, _ in AssessmentScheduler(pedestrian_groups=True).due([walkers, mixed], 0)] == \
        ["g1", "g2"]


def test_a_pedestrian_and_a_vehicle_group_from_further_apart():
    scene = [person(1, 0), person(2, 200), car(3, 380)]  # gaps: person-person 1.6, person-car 1.4 heights
    assert group_detections(scene, link_factor=1.0) == []
    (group,) = group_detections(scene, link_factor=1.0, pv_link_factor=1.5)
    assert sorted(group.member_ids) == [2, 3]


def with_conflict(severity, ttc):
    from traffic_celery.protocol import ConflictFacts

    conflict = ConflictFacts(conflictType="vehicle-pedestrian", trackIds=[1, 2], classes=["car", "person"], ttc=ttc,
                             distance=4.0, minDistance=4.0, units="metric", severity=severity)
    return GroupFeatures(2, {"car": 1, "person": 1}, 0.8, 0.8, conflict=conflict)


def test_a_near_miss_is_asked_at_once_and_again_only_when_it_gets_worse():
    s = AssessmentScheduler(reassess_interval=60, min_interval=5)
    assert [r for _, r in s.due([group("g1", [1, 2], with_conflict(None, None))], 0)] == ["appeared"]
    # medium within the debounce interval: asked at once
    assert [r for _, r in s.due([group("g1", [1, 2], with_conflict("medium", 1.4))], 0.5)] == ["near_miss"]
    assert s.due([group("g1", [1, 2], with_conflict("medium", 1.3))], 1.0) == []  # not worse enough, debounced
    assert [r for _, r in s.due([group("g1", [1, 2], with_conflict("high", 0.9))], 1.5)] == ["near_miss"]
    # after the debounce, a TTC 30% lower than at the last call is a worsening
    assert [r for _, r in s.due([group("g1", [1, 2], with_conflict("high", 0.6))], 7.0)] == ["worsened"]
    assert s.due([group("g1", [1, 2], with_conflict("high", 0.55))], 13.0) == []


def test_a_new_group_already_in_a_near_miss_is_asked_as_one():
    s = AssessmentScheduler()
    assert [r for _, r in s.due([group("g9", [1, 2], with_conflict("high", 0.8))], 0)] == ["near_miss"]
