"""Motion gating, per-camera input sizes, lazy decoding and the capture processes, with the real model, real frames,
a real Redis and real capture nodes.

- a still scene runs the detector once, then not again until the keyframe refresh, and keeps its track ids;
- a person moving over a still background is detected in a crop of its region, with the box full-frame detection
  gives (IoU >= 0.5), for a fraction of the pixels;
- the keyframe comes on time; `TC_GATE=off` detects the whole frame every time;
- two capture nodes on one Redis split six cameras three and three (the fair-share rule), and take them all back
  when the other one stops; a dead capture process is restarted by its supervisor;
- a camera's own `imgsz` is the detector's input size; the rewritten model runs at any size and reproduces the
  original graph (a wrong decoding is caught at load);
- a file read faster than it is analysed converts only the frames asked for.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections import Counter

import cv2
import numpy as np
import pytest

from traffic_celery import names
from traffic_celery.capture.loop import CaptureLoop
from traffic_celery.capture.node import CaptureNode
from traffic_celery.capture.sources import FrameSource, SourceOptions
from traffic_celery.registry import CameraConfig, CameraRegistry
from traffic_celery.safety import synthetic
from traffic_celery.settings import REPO_ROOT, Settings
from traffic_celery.vision import litert
from traffic_celery.vision.detection import Detector
from traffic_celery.vision.gating import GateConfig, MotionGate, box_iou, fit_to_grid
from traffic_celery.vision.tracking import Tracker

from .conftest import ASSETS_BUS, Proc, wait_for


@pytest.fixture(scope="module")
def detector() -> Detector:
    detector = Detector.from_settings(Settings())
    assert detector.any_size, "the offline .tflite model runs at any input size"
    return detector


@pytest.fixture(scope="module")
def street(sample_video) -> np.ndarray:
    cap = cv2.VideoCapture(str(sample_video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


@pytest.fixture(scope="module")
def person(detector) -> np.ndarray:
    """The whole man on the left of ultralytics' bus.jpg, cut out and scaled to 120 px, about the size people have
    in the sample video."""
    image = cv2.imread(str(ASSETS_BUS))
    man = max((d for d in detector.detect(image) if d.cls == "person"), key=lambda d: d.width)
    x1, y1, x2, y2 = (int(v) for v in man.bbox)
    cut = image[y1:y2, x1:x2]
    return cv2.resize(cut, (round(cut.shape[1] * 120 / cut.shape[0]), 120), interpolation=cv2.INTER_AREA)


def scene(person: np.ndarray, x: int, y: int = 300) -> np.ndarray:
    """A still, textured ground (768x576) with `person` pasted at (x, y)."""
    rng = np.random.default_rng(7)  # the same ground every frame
    ground = cv2.GaussianBlur(rng.integers(90, 150, (576, 768, 3), dtype=np.uint8), (9, 9), 0)
    h, w = person.shape[:2]
    ground[y:y + h, x:x + w] = person
    return ground


def iou(a, b) -> float:
    return float(box_iou(np.array([a], np.float32), np.array([b], np.float32))[0, 0])


def test_a_still_scene_runs_the_detector_once_until_the_refresh_and_keeps_its_ids(detector, street):
    gate, tracker = MotionGate(GateConfig(refresh=5.0)), Tracker()
    calls_before = sum(detector.inputs.values())
    first = gate.detect(street, 0.0, detector, tracker)
    ids = sorted((d.track_id, d.cls) for d in first)
    assert len(first) >= 4 and all(i is not None for i, _ in ids), ids  # the first frame's tracks start confirmed
    for k in range(1, 10):  # 4.5 s of the same frame at 2 fps
        again = gate.detect(street.copy(), k * 0.5, detector, tracker)
        assert sorted((d.track_id, d.cls) for d in again) == ids
    assert sum(detector.inputs.values()) - calls_before == 1, "no detector call while nothing moves"
    assert gate.counts == Counter(full=1, still=9)
    refreshed = gate.detect(street.copy(), 5.0, detector, tracker)  # the keyframe: the whole frame again
    assert gate.counts["full"] == 2 and sum(detector.inputs.values()) - calls_before == 2
    assert sorted((d.track_id, d.cls) for d in refreshed) == ids  # the tracker keeps every id


def test_a_moving_person_is_detected_in_its_region_with_the_full_frame_box(detector, person):
    gate = MotionGate(GateConfig(refresh=60.0))
    assert gate.detect(scene(person[:0], 100), 0.0, detector, Tracker()) == []  # the empty ground: a keyframe
    crops = []
    for k in range(1, 6):  # someone walks in, 40 px a frame
        frame = scene(person, 100 + 40 * k)
        before = Counter(detector.inputs)
        found = gate.detect(frame, k * 0.5, detector, None)
        crops.append(detector.inputs - before)
        full = [d for d in detector.detect(frame) if d.cls == "person"]
        assert len(full) == 1
        people = [d for d in found if d.cls == "person"]
        assert len(people) == 1 and iou(people[0].bbox, full[0].bbox) >= 0.5, (people, full)
    assert gate.counts["full"] == 1 and gate.counts["regions"] == 5, gate.counts
    # each frame detected one crop, at a fraction of the whole frame's input (640 on the longer side)
    assert all(sum(c.values()) == 1 and max(c) <= 256 for c in crops), crops


def test_the_previous_box_of_someone_who_left_goes(detector, person):
    gate = MotionGate(GateConfig(refresh=60.0))
    assert [d.cls for d in gate.detect(scene(person, 300), 0.0, detector, None)] == ["person"]
    empty = scene(person[:0], 300)  # the person is gone: the place they left moves
    assert gate.detect(empty, 0.5, detector, None) == []
    assert gate.counts["regions"] == 1


def mode(gate: MotionGate, before: Counter) -> str:
    """What the gate did with the last frame: full, regions or still."""
    (done,) = [m for m in ("full", "regions", "still") if gate.counts[m] != before[m]]
    return done


def test_the_keyframe_comes_on_time_and_when_too_much_moves(detector, person):
    gate = MotionGate(GateConfig(refresh=2.0, max_area=0.5))
    modes = []
    for k in range(7):
        before = Counter(gate.counts)
        gate.detect(scene(person, 100 + 30 * k), k * 0.5, detector, None)
        modes.append(mode(gate, before))
    assert modes == ["full", "regions", "regions", "regions", "full", "regions", "regions"]
    before = Counter(gate.counts)
    gate.detect(cv2.convertScaleAbs(scene(person, 310), alpha=0.5), 3.5, detector, None)  # the light dims
    assert mode(gate, before) == "full"


def test_gate_off_detects_every_frame(detector, street, monkeypatch, settings, redis_client):
    monkeypatch.setenv("TC_GATE", "off")
    off = Settings(redis_url=settings.redis_url, llm_api_keys=settings.llm_api_keys,
                   database_url=settings.database_url)
    assert off.gate is False and GateConfig.from_settings(off).enabled is False
    loop = CaptureLoop(CameraConfig(camera_id="gate-off", url="0"), off, redis_client, lambda: detector,
                       lambda job: "task")
    calls_before = sum(detector.inputs.values())
    for k in range(4):
        loop.analyse(street, detector, ts=1000.0 + k * 0.5)
    assert loop.gate.counts == Counter(full=4)
    assert sum(detector.inputs.values()) - calls_before == 4


def test_a_camera_s_own_imgsz_is_the_detector_s_input(detector, street, settings, redis_client):
    def loop(config: CameraConfig) -> CaptureLoop:
        return CaptureLoop(config, settings, redis_client, lambda: detector, lambda job: "task")

    before = Counter(detector.inputs)
    analysis = loop(CameraConfig(camera_id="small-input", url="0", imgsz=320)).analyse(street, detector, ts=1000.0)
    assert (detector.inputs - before) == Counter({320: 1})
    assert any(d.cls == "person" for d in analysis.detections)  # boxes in the frame's own pixels
    assert all(0 <= d.bbox[0] < d.bbox[2] <= 768 and 0 <= d.bbox[1] < d.bbox[3] <= 576 for d in analysis.detections)
    before = Counter(detector.inputs)  # a camera without one: TC_YOLO_IMGSZ
    loop(CameraConfig(camera_id="default-input", url="0")).analyse(street, detector, ts=1000.0)
    assert (detector.inputs - before) == Counter({settings.yolo_imgsz: 1})


def test_a_crop_is_grown_to_the_model_s_grid_inside_the_frame():
    scale = 640 / 768
    for region in [(100, 100, 150, 220), (740, 500, 768, 576), (0, 0, 10, 10)]:
        x1, y1, x2, y2 = fit_to_grid(region, scale, 768, 576)
        assert 0 <= x1 <= region[0] and region[2] <= x2 <= 768 and 0 <= y1 <= region[1] and region[3] <= y2 <= 576
        for side in (x2 - x1, y2 - y1):
            assert abs(side * scale / 32 - round(side * scale / 32)) < 0.05, (region, side)


def test_two_capture_nodes_split_six_cameras_three_and_three(isolated_redis, tmp_path, request):
    settings = Settings(redis_url=isolated_redis.url, capture_heartbeat=0.2, capture_lease_ttl=2, loop_files=True,
                        database_url=f"sqlite:///{tmp_path / 'h.db'}")
    r = isolated_redis.client
    registry = CameraRegistry(r)
    # the synthetic scene (its colour detector costs little), in the media folder: the only folder a camera reads
    (REPO_ROOT / ".media").mkdir(exist_ok=True)
    video = REPO_ROOT / ".media" / f"test-share-{uuid.uuid4().hex[:6]}.avi"
    synthetic.render(synthetic.conflict_scene(), video, fps=10, seconds=3)
    request.addfinalizer(lambda: video.unlink(missing_ok=True))
    for i in range(6):
        registry.put(CameraConfig(camera_id=f"share-{i}", url=str(video), detector="colour", frameInterval=1.0))

    def owners() -> Counter:
        return Counter(r.get(names.owner_key(f"share-{i}")) for i in range(6))

    def no_model() -> Detector:
        raise AssertionError("colour cameras load no model")

    first = CaptureNode(settings, r, no_model, lambda job: "task", node_id="node-a").start()
    second = None
    try:
        wait_for(lambda: owners() == Counter({b"node-a": 6}), 20, lambda: f"node-a to take all six: {owners()}")
        second = CaptureNode(settings, r, no_model, lambda job: "task", node_id="node-b").start()
        wait_for(lambda: owners() == Counter({b"node-a": 3, b"node-b": 3}), 20,
                 lambda: f"three cameras each: {owners()}")
        assert len(first.loops()) == 3 and len(second.loops()) == 3
        second.stop()
        second = None
        wait_for(lambda: owners() == Counter({b"node-a": 6}), 20, lambda: f"node-a to take them back: {owners()}")
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_a_dead_capture_process_is_restarted(isolated_redis, base_env, log_dir):
    env = {**isolated_redis.env(base_env), "TC_CAPTURE_PROCESSES": "2", "TC_CAPTURE_HEARTBEAT": "0.3",
           "TC_CAPTURE_LEASE_TTL": "2"}
    r = isolated_redis.client
    supervisor = Proc("capture-supervised", [sys.executable, "-m", "traffic_celery.capture"], env, log_dir)
    try:
        def live() -> list[str]:
            return [n.decode() for n in r.zrangebyscore(names.CAPTURE_NODES, "-inf", "+inf")]

        first = wait_for(lambda: len(live()) == 2 and live(), 90, lambda: f"two capture processes: {live()}")
        assert all(f":{supervisor.process.pid}:" in node for node in first)  # the supervisor's pid in their ids
        victim = int(first[0].split(":")[2].split(".")[1])
        os.kill(victim, signal.SIGKILL)
        renewed = wait_for(lambda: len(set(live()) - set(first)) == 1 and live(), 60,
                           lambda: f"a new capture process: {live()} (supervisor output: {supervisor.output()[-800:]})")
        assert first[1] in renewed and "restarting it" in supervisor.output()
    finally:
        assert supervisor.stop() == 0, supervisor.output()[-2000:]
    seconds, micros = r.time()
    now_ms = seconds * 1000 + micros // 1000
    assert r.zcount(names.CAPTURE_NODES, now_ms, "+inf") == 0  # no live node left: each said it was gone


def test_a_file_read_faster_than_it_is_analysed_converts_only_the_frames_asked_for(sample_video):
    source = FrameSource(str(sample_video), SourceOptions(pace="realtime")).start()
    try:
        seq, frames = 0, []
        deadline = time.monotonic() + 10
        while len(frames) < 4 and time.monotonic() < deadline:
            frame, seq = source.newest(seq, timeout=2)
            if frame is not None:
                frames.append(frame)
            wait_for(lambda: source.frames_read >= seq + 4, 5, "the reader to go on at 10 fps")
        assert len(frames) == 4 and all(f.shape == (576, 768, 3) for f in frames)
        assert source.frames_read >= 16
        assert source.frames_converted == 4, (source.frames_read, source.frames_converted)
    finally:
        source.stop()


def test_the_rewritten_model_reproduces_the_original_graph_and_a_wrong_decoding_is_caught(detector):
    model = litert.AnySizeModel(detector.model_path)
    litert.check_against_original(detector.model_path, model)  # every anchor's box and class scores agree
    model._bins = model._bins[::-1].copy()  # decode the box distributions backwards: the check must notice
    with pytest.raises(litert.UnsupportedGraph, match="does not reproduce"):
        litert.check_against_original(detector.model_path, model)


def test_a_frame_runs_at_any_input_size_with_boxes_in_its_own_pixels(detector, street):
    big = {d.cls for d in detector.detect(street, imgsz=640)}
    assert {"person", "car"} <= big
    for size in (320, 480, 800):
        found = detector.predict(street, size)
        assert len(found) and found.xyxy[:, [0, 2]].max() <= 768 and found.xyxy[:, [1, 3]].max() <= 576
    car = max((d for d in detector.detect(street) if d.cls == "car"), key=lambda d: d.confidence)
    x1, y1, x2, y2 = (int(v) for v in car.bbox)
    crop = street[max(0, y1 - 40):y2 + 40, max(0, x1 - 40):x2 + 40]  # the parked car, cut out with a margin
    small = detector.predict(crop, 96)  # a 96 px input
    cars = small.xyxy[small.cls == next(i for i, n in detector.names.items() if n == "car")]
    assert len(cars), "the car is found in its crop at a small input size"
    offset = np.array([max(0, x1 - 40), max(0, y1 - 40)] * 2, dtype=np.float32)
    assert max(iou(car.bbox, box) for box in cars + offset) >= 0.5
