"""The incident lifecycle as the tracker decides it: open on a near miss or a dangerous verdict, update on news,
end after a quiet period, each verdict once; and the clip and snapshot helpers, read back with OpenCV."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from traffic_celery.protocol import Assessment, ConflictFacts
from traffic_celery.safety import clips
from traffic_celery.safety.incidents import IncidentTracker
from traffic_celery.vision.types import Detection


def facts(ttc: float | None, severity: str | None, pet: float | None = None, distance: float = 5.0,
          pair: tuple[int, int] = (1, 2)) -> ConflictFacts:
    return ConflictFacts(conflictType="vehicle-pedestrian", trackIds=list(pair), classes=["car", "person"], ttc=ttc,
                         pet=pet, distance=distance, minDistance=distance, relativeSpeed=10.0, units="metric",
                         severity=severity)


def verdict(task_id: str, level: str, members: list[int], incident_id: str | None = None) -> Assessment:
    return Assessment(cameraId="c", groupId="g1", groupIndex=0, taskId=task_id, riskLevel=level, riskTypes=[],
                      description=f"{level} risk", confidence=0.8, dangerObjectIds=[], llmLatency=0.1,
                      llmModel="m", apiKeyId="k", frameTimestamp=0.0, incidentId=incident_id,
                      memberTrackIds=members)


@pytest.fixture()
def tracker() -> IncidentTracker:
    ids = (f"i{n}" for n in itertools.count(1))
    return IncidentTracker("c", quiet=3.0, new_id=lambda: next(ids))


def test_a_near_miss_opens_updates_and_ends(tracker):
    assert tracker.observe(0.0, {(1, 2): facts(2.5, "low")}, {}) == []  # low: watched, no incident
    [opened] = tracker.observe(0.5, {(1, 2): facts(1.4, "medium")}, {1: ("crosswalk",)})
    assert (opened.incident.state, opened.incident.severity, opened.incident.zones) == ("new", "medium",
                                                                                         ["crosswalk"])
    assert opened.worst_moment and opened.send
    # worse within a second: kept as the worst moment (snapshot), no event yet
    [quiet_change] = tracker.observe(1.0, {(1, 2): facts(1.2, "medium")}, {})
    assert not quiet_change.send and quiet_change.worst_moment
    # a higher severity is news at once
    [update] = tracker.observe(1.2, {(1, 2): facts(0.8, "high")}, {})
    assert (update.incident.state, update.incident.severity, update.incident.metrics.ttc) == ("update", "high", 0.8)
    # better metrics later change nothing worth telling, and keep the worst ones
    assert tracker.observe(1.5, {(1, 2): facts(2.0, "low")}, {}) == []
    assert tracker.open_incidents()[0].metrics.ttc == 0.8
    assert tracker.expire(4.1) == []  # active at 1.2: quiet for 2.9 s only
    [ended] = tracker.expire(4.2)
    assert (ended.state, ended.endedAt) == ("end", 4.2)
    assert tracker.finished(5.0, post_roll=3.0) == []  # the clip's post-roll is not over
    [done] = tracker.finished(7.2, post_roll=3.0)
    assert done.incidentId == opened.incident.incidentId and tracker.open_incidents() == []


def test_a_dangerous_verdict_opens_an_incident_and_each_verdict_counts_once(tracker):
    assert tracker.verdict(0.0, verdict("t0", "low", [1, 2])) == []  # low and no incident: nothing
    [opened] = tracker.verdict(1.0, verdict("t1", "high", [1, 2]), {1: ("car", ()), 2: ("person", ("crosswalk",))})
    assert (opened.incident.openedBy, opened.incident.severity, opened.incident.trackIds) == ("verdict", "high",
                                                                                              [1, 2])
    assert (opened.incident.classes, opened.incident.zones) == (["car", "person"], ["crosswalk"])
    assert tracker.verdict(1.5, verdict("t1", "high", [1, 2])) == []  # the same task again
    [update] = tracker.verdict(2.0, verdict("t2", "medium", [2, 3], incident_id=opened.incident.incidentId))
    assert [v.taskId for v in update.incident.verdicts] == ["t1", "t2"]
    assert update.incident.trackIds == [1, 2, 3] and update.incident.severity == "high"


def test_a_verdict_joins_the_near_miss_of_its_tracks(tracker):
    [opened] = tracker.observe(0.0, {(4, 7): facts(0.9, "high", pair=(4, 7))}, {})
    assert tracker.incident_for([7, 9]) == opened.incident.incidentId
    [update] = tracker.verdict(0.5, verdict("t9", "none", [7, 9]))  # attached even at "none": it is about it
    assert update.incident.incidentId == opened.incident.incidentId
    assert update.incident.verdicts[0].riskLevel == "none" and update.incident.severity == "high"
    # a verdict of "none" does not keep the incident open: it ends 3 s after the near miss
    assert [i.incidentId for i in tracker.expire(3.0)] == [opened.incident.incidentId]


def test_the_ring_keeps_the_pre_roll_and_the_frames_of_open_incidents():
    ring = clips.FrameRing(pre=1.0, longest=12.0)
    for i in range(30):
        ring.add(i * 0.5, b"x", [], keep_from=None if i < 10 else 5.0)
    # up to frame 9 (4.5 s) only the last second is kept; from 5.0 s on, everything since 4.0 s
    kept = ring.between(0.0, 100.0)
    assert kept[0].ts == 4.0 and kept[-1].ts == 14.5
    ring.add(30.0, b"x", [], keep_from=5.0)  # bounded by `longest`
    assert [f.ts for f in ring.between(0.0, 100.0)] == [30.0]  # nothing older than 30 - 12 s


def test_a_clip_reads_back_with_the_frames_and_duration_asked(tmp_path):
    frames = []
    for i in range(12):  # 6 s at 2 frames/s
        image = np.full((240, 320, 3), 40, np.uint8)
        cv2.circle(image, (20 + i * 25, 120), 10, (0, 200, 0), -1)
        ok, buf = cv2.imencode(".jpg", image)
        assert ok
        frames.append(clips.RingFrame(100 + i * 0.5, buf.tobytes(),
                                      (Detection(1, "car", 0.9, (10 + i * 25, 110, 30 + i * 25, 130)),)))
    fps = clips.frame_rate(frames, default=1.0)
    assert fps == pytest.approx(2.0)
    data = clips.write_clip(frames, {1}, fps)
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a Matroska/WebM file
    path = tmp_path / "clip.webm"
    path.write_bytes(data)
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 12
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(2.0)
    assert count / capture.get(cv2.CAP_PROP_FPS) == pytest.approx(6.0)


def test_a_snapshot_is_the_full_frame_with_the_incident_boxed():
    frame = np.zeros((200, 300, 3), np.uint8)
    jpeg = clips.snapshot(frame, [Detection(5, "car", 0.9, (50, 50, 150, 120)),
                                  Detection(6, "person", 0.9, (200, 60, 230, 140))], highlight={5})
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (200, 300, 3)
    red = image[:, :, 2].astype(int) - image[:, :, 1].astype(int)
    assert red[50, 100] > 100  # the incident's car: a red edge
    assert abs(int(image[100, 200, 2]) - int(image[100, 200, 1])) < 40  # the other: grey


@pytest.mark.parametrize("scene_name", ["conflict", "calm"])
def test_the_synthetic_scenes_open_one_incident_and_none(tmp_path, scene_name):
    """The near-miss scene opens exactly one incident, of the car and the pedestrian; the calm scene none."""
    from traffic_celery.safety import synthetic
    from traffic_celery.safety.conflicts import ConflictMonitor, Thresholds
    from traffic_celery.settings import Settings
    from traffic_celery.vision.colour import ColourDetector

    scene = synthetic.conflict_scene() if scene_name == "conflict" else synthetic.calm_scene()
    path = tmp_path / "scene.avi"
    synthetic.render(scene, path, fps=10, seconds=8)
    settings = Settings()
    monitor = ConflictMonitor(Thresholds.from_settings(settings), settings.track_smoothing_window, scene.ground())
    ids = (f"i{n}" for n in itertools.count(1))
    tracker = IncidentTracker("synthetic", quiet=settings.incident_quiet, new_id=lambda: next(ids))
    detector, capture, opened, index = ColourDetector(), cv2.VideoCapture(str(path)), [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % 2 == 0:  # 5 frames/s analysed
            ts = index / 10
            conflicts = monitor.update(ts, detector.detect(frame), frame.shape[1], frame.shape[0])
            opened += [c.incident for c in tracker.observe(ts, conflicts, {}) if c.incident.state == "new"]
            tracker.expire(ts)
        index += 1
    capture.release()
    if scene_name == "calm":
        assert opened == []
    else:
        assert len(opened) == 1 and opened[0].trackIds == [1, 2] and opened[0].conflictType == "vehicle-pedestrian"
        assert opened[0].metrics.units == "metric"
