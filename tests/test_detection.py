"""Real detections with the pretrained offline model: not just that a list came back."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from traffic_celery.detection import Detector, DetectorError
from traffic_celery.settings import Settings

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
