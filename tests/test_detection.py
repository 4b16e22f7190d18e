"""Real detections with the pretrained offline model: not just that a list came back."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from traffic_celery.settings import Settings
from traffic_celery.vision.detection import Detector, DetectorError

ASSETS = Path(__import__("ultralytics").__file__).parent / "assets"


@pytest.fixture(scope="module")
def detector() -> Detector:
    settings = Settings()
    assert Path(settings.model_path).exists(), f"detection model missing: {settings.model_path}"
    return Detector.from_settings(settings)


def test_bus_jpg_has_the_bus_and_people(detector):
    dets = detector.detect(cv2.imread(str(ASSETS / "bus.jpg")))
    classes = [d.cls for d in dets]
    assert "bus" in classes
    assert classes.count("person") >= 3
    bus = next(d for d in dets if d.cls == "bus")
    assert bus.confidence > 0.6 and bus.width > 500  # the bus spans most of the 810 px wide photo


def test_sample_video_has_people_and_the_parked_car(detector, sample_video):
    cap = cv2.VideoCapture(str(sample_video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    cap.release()
    assert ok
    dets = detector.detect(frame)
    assert sum(d.cls == "person" for d in dets) >= 3
    car = [d for d in dets if d.cls == "car"]
    assert car and car[0].bbox[0] > 700 and car[0].bbox[3] < 120  # parked at the top right of the frame


def test_class_names_are_spelled_as_the_model_spells_them(detector):
    assert "traffic light" in detector.names.values()  # not `traffic_light` (old defect 10)
    with pytest.raises(DetectorError, match="unknown class names"):
        Detector(Settings().model_path, classes=["traffic_light"])


def test_unloadable_model_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match="cannot load detection model"):
        Detector(str(bogus))


def test_tracking_and_group_ids_are_stable_on_the_sample_video(detector, sample_video):
    from traffic_celery.vision.grouping import GroupIds, group_detections
    from traffic_celery.vision.tracking import Tracker

    tracker, group_ids = Tracker(), GroupIds()
    cap = cv2.VideoCapture(str(sample_video))
    frames_ids, frames_groups = [], []
    for _ in range(12):  # every 3rd frame of 10 fps: the capture loop's pace at 0.3 s
        for _ in range(3):
            ok, frame = cap.read()
        dets = detector.detect(frame, tracker)
        assert len(dets) == len(detector.detect(frame))  # tracking hides nothing the detector found
        frames_ids.append({d.track_id for d in dets if d.track_id is not None})
        frames_groups.append({g.group_id: {m.track_id for m in g.members}
                              for g in group_ids.assign(group_detections(dets))})
    cap.release()
    # people walk on: most track ids of a frame are still there in the next
    kept = [len(a & b) / max(1, len(a)) for a, b in zip(frames_ids[1:], frames_ids[2:], strict=False)]
    assert sum(kept) / len(kept) >= 0.8, kept
    # the parked car and the van next to it form a group whose id never changes while both are seen
    parked = [gid for groups in frames_groups for gid, members in groups.items() if len(members) >= 2]
    assert parked
    most_common = max(set(parked), key=parked.count)
    assert parked.count(most_common) >= 8, frames_groups


@pytest.mark.parametrize("scale", [2.0, 0.75])
def test_real_scene_gives_the_same_groups_at_another_resolution(detector, sample_video, scale):
    """The old system grouped with a fixed 150 px; here the same frame upscaled or downscaled groups alike."""
    from traffic_celery.vision.grouping import group_detections

    cap = cv2.VideoCapture(str(sample_video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    cap.release()
    resized = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1
                         else cv2.INTER_LINEAR)

    def groups_of(image, k):
        return sorted((g.classes, len(g.members), tuple(round(v / k / 8) for v in g.bbox))
                      for g in group_detections(detector.detect(image)))

    original, other = groups_of(frame, 1.0), groups_of(resized, scale)
    assert original, "the frame has groups (the parked van and car)"
    # same groups, same members; boxes equal to within 8 px of the original frame
    assert [(c, n) for c, n, _ in original] == [(c, n) for c, n, _ in other]
    for (_, _, a), (_, _, b) in zip(original, other, strict=False):
        assert all(abs(x - y) <= 1 for x, y in zip(a, b, strict=False)), (original, other)


def test_the_model_keeps_at_most_tc_yolo_interpreters_shapes_planned(monkeypatch):
    """Each new input shape gets an interpreter until TC_YOLO_INTERPRETERS, then the least recently used ones are
    re-planned; the boxes do not depend on which interpreter ran."""
    monkeypatch.setenv("TC_YOLO_INTERPRETERS", "2")
    detector = Detector.from_settings(Settings())
    image = cv2.imread(str(ASSETS / "bus.jpg"))
    first = detector.predict(image, 640)
    for size in (96, 160, 224, 320, 640):
        detector.predict(image, size)
    model = detector._any_size
    assert model is not None and len(model._pool) == 2  # at most two interpreters, however many shapes came
    again = detector.predict(image, 640)
    assert len(again) == len(first) and abs(again.xyxy - first.xyxy).max() < 1e-3
