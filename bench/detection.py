"""Capture and detection numbers on the sample video, against bare `model.predict` on the same frames.

The frames are every 5th frame of the sample video (10 fps, so one frame every 0.5 s: a camera sampled at 2 fps),
written to a temporary video file. Measured in one command, interleaved (bare, pipeline, bare, pipeline, bare)
because the machine is noisy:

- `predict_fps`: ultralytics `model.predict` on those frames, already decoded in memory, nothing else;
- `pipeline_fps`: the whole path of a real :class:`CaptureLoop` on that file (`file_pace=fast`, every frame
  analysed): decode in the reader thread, detect, track, group with motion features, schedule, store crops in
  Redis, publish `detection_result`, and send `assess_group` tasks to a real Celery broker (an embedded Redis);
- `ratio` = pipeline_fps / predict_fps (the goal is >= 0.95);
- `cameras_per_core_at_2fps`: 1 / (2 x CPU seconds the pipeline spent per frame, every thread of the process);
- LLM calls per camera-minute (of video time) with the scheduler, and with one call per group per frame;
- `batch2_fps`: `predict` on two frames at once (what batching two cameras' frames would give), against the
  lock's frame-at-a-time `predict_fps`.

    .venv/bin/python bench/detection.py [--frames 120] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from traffic_celery.capture.loop import CaptureLoop  # noqa: E402
from traffic_celery.embedded_redis import EmbeddedRedis  # noqa: E402
from traffic_celery.llm.dispatch import Dispatcher  # noqa: E402
from traffic_celery.llm.keys import KeyPool  # noqa: E402
from traffic_celery.llm.router import build_router  # noqa: E402
from traffic_celery.redis_conn import connect  # noqa: E402
from traffic_celery.registry import CameraConfig  # noqa: E402
from traffic_celery.settings import DEMO_KEYS_FILE, Settings  # noqa: E402
from traffic_celery.vision.detection import Detector, configure_ultralytics_offline  # noqa: E402

STRIDE = 5  # 10 fps video -> 2 fps


def load_frames(video: Path, count: int) -> list:
    cap = cv2.VideoCapture(str(video))
    frames, index = [], 0
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        if index % STRIDE == 0:
            frames.append(frame)
        index += 1
    cap.release()
    return frames


def write_video(frames: list, path: Path) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0 / STRIDE, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def predict_fps(detector: Detector, frames: list, batch: int = 1) -> float:
    model, kwargs = detector._model, dict(conf=detector._conf, imgsz=detector._imgsz,  # noqa: SLF001
                                          classes=detector._class_ids, verbose=False)  # noqa: SLF001
    started = time.monotonic()
    for i in range(0, len(frames) - batch + 1, batch):
        model.predict(frames[i] if batch == 1 else frames[i:i + batch], **kwargs)
    return (len(frames) // batch * batch) / (time.monotonic() - started)


def make_dispatcher(settings: Settings) -> tuple[redis.Redis, Dispatcher]:
    """Redis and the real enqueue path (Celery app, router over the keys), as a capture node builds them."""
    from traffic_celery.broker.config import producer_app

    r = connect(settings)
    return r, Dispatcher(producer_app(settings), build_router(settings, r, KeyPool.from_settings(settings)))


def run_pipeline(settings: Settings, detector: Detector, video: Path) -> dict[str, float]:
    r, dispatcher = make_dispatcher(settings)  # per run: "counting start-up" includes connecting
    loop = CaptureLoop(CameraConfig(camera_id="bench", url=str(video)), settings, r, lambda: detector,
                       dispatcher)
    cpu0, wall0 = time.process_time(), time.monotonic()
    loop.start()
    loop.done.wait()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    if loop.failed:
        raise SystemExit(f"the capture loop failed: {loop.failed}")
    frames = loop.frames_analysed
    steady = (frames - 1) / (loop.last_frame_done - loop.first_frame_done)  # after one-time costs (connections)
    minutes = frames * STRIDE / 10.0 / 60.0
    calls = sum(loop.scheduler.calls.values())
    return {"frames": frames, "pipeline_fps": steady, "pipeline_fps_with_start": frames / wall, "cpu_per_frame_s": cpu / frames,
            "tasks_enqueued": loop.tasks_enqueued, "calls": calls, "calls_saved": loop.scheduler.saved,
            "calls_by_reason": dict(loop.scheduler.calls),
            "calls_per_camera_minute": calls / minutes,
            "calls_per_camera_minute_every_frame": (calls + loop.scheduler.saved) / minutes}


def sustain(settings: Settings, detector: Detector, cameras: int, seconds: float) -> dict[str, float]:
    """`cameras` real capture loops on the sample video at real-time pace, one frame every 0.5 s each, sharing
    the process's one model: the frames per second each one really got."""
    live = settings.model_copy(update={"file_pace": "realtime", "loop_files": True, "frame_interval": 0.5})
    r, dispatcher = make_dispatcher(live)
    loops = [CaptureLoop(CameraConfig(camera_id=f"sustain-{i}", url=str(live.sample_video)), live, r,
                         lambda: detector, dispatcher).start() for i in range(cameras)]
    time.sleep(2.0)  # sources open, trackers built
    counts = [loop.frames_analysed for loop in loops]
    time.sleep(seconds)  # measuring a fixed window, not waiting for a condition
    fps = [(loop.frames_analysed - c) / seconds for loop, c in zip(loops, counts, strict=False)]
    for loop in loops:
        loop.stop_async()
    for loop in loops:
        loop.stop()
    return {"cameras": cameras, "min_fps": min(fps), "mean_fps": sum(fps) / len(fps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=120, help="frames at 2 fps (120: one minute of video)")
    parser.add_argument("--rounds", type=int, default=2, help="capture-path runs, each between two bare runs")
    parser.add_argument("--sustain", default="auto", help="camera counts to run at 2 fps at once, e.g. 6,8 "
                        "(auto: the estimate for one core, and for all cores; none: skip)")
    parser.add_argument("--sustain-seconds", type=float, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    configure_ultralytics_offline()
    redis_server = EmbeddedRedis().start()
    try:
        settings = Settings(redis_url=redis_server.url, llm_keys_file=DEMO_KEYS_FILE, file_pace="fast",
                            loop_files=False)
        frames = load_frames(settings.sample_video, args.frames)
        if len(frames) < 10:
            raise SystemExit(f"the sample video {settings.sample_video} is missing or short: run "
                             "scripts/fetch_sample_video.sh")
        detector = Detector.from_settings(settings)
        detector.warm_up()
        with tempfile.TemporaryDirectory() as tmp:
            video = Path(tmp) / "every-5th.avi"
            write_video(frames, video)
            bare, runs = [], []
            for round_ in range(args.rounds):  # bare, pipeline, bare, pipeline, ..., bare: drift hits both
                print(f"round {round_ + 1}/{args.rounds}: bare predict, then the capture path…", file=sys.stderr)
                bare.append(predict_fps(detector, frames))
                runs.append(run_pipeline(settings, detector, video))
            bare.append(predict_fps(detector, frames))
            pipeline = {**runs[-1], "pipeline_fps": sum(r["pipeline_fps"] for r in runs) / len(runs),
                        "pipeline_fps_runs": [r["pipeline_fps"] for r in runs],
                        "pipeline_fps_with_start": sum(r["pipeline_fps_with_start"] for r in runs) / len(runs),
                        "cpu_per_frame_s": sum(r["cpu_per_frame_s"] for r in runs) / len(runs)}
            print("two frames per predict…", file=sys.stderr)
            batch2 = predict_fps(detector, frames, batch=2)
        per_core = 1.0 / (2.0 * pipeline["cpu_per_frame_s"])
        cores = os.cpu_count() or 1
        if args.sustain == "auto":  # one process is one core here (the model runs on one thread)
            counts = [int(per_core), int(per_core) * cores]
        else:
            counts = [] if args.sustain == "none" else [int(n) for n in args.sustain.split(",")]
        sustained = []
        for n in counts:
            print(f"{n} cameras at 2 fps for {args.sustain_seconds:.0f}s…", file=sys.stderr)
            sustained.append(sustain(settings, detector, n, args.sustain_seconds))
    finally:
        redis_server.stop()
    base = sum(bare) / len(bare)
    result = {"predict_fps": base, "predict_fps_runs": bare, **pipeline, "ratio": pipeline["pipeline_fps"] / base,
              "cameras_per_core_at_2fps": per_core, "cores": cores, "sustained": sustained,
              "batch2_fps": batch2, "batch2_vs_lock": batch2 / base}
    rows = [("frames (2 fps of video)", result["frames"]),
            ("bare model.predict, frames/s", base),
            ("whole capture path, frames/s", result["pipeline_fps"]),
            ("  the same, counting start-up", result["pipeline_fps_with_start"]),
            ("ratio pipeline / predict", result["ratio"]),
            ("CPU s per frame (all threads)", result["cpu_per_frame_s"]),
            ("cameras per core at 2 fps", result["cameras_per_core_at_2fps"]),
            ("predict 2 frames at once, frames/s", batch2),
            ("ratio batch of 2 / one at a time", result["batch2_vs_lock"]),
            ("LLM calls / camera-minute, scheduled", result["calls_per_camera_minute"]),
            ("LLM calls / camera-minute, every frame", result["calls_per_camera_minute_every_frame"]),
            ("calls saved (share)", result["calls_saved"] / max(1, result["calls"] + result["calls_saved"]))]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value:10.3f}")
    print(f"calls by reason: {pipeline['calls_by_reason']}")
    if sustained:
        print(f"\n{'cameras at once':<16}{'min fps':>9}{'mean fps':>10}   (goal: 2.0 each, {cores} cores)")
        for row in sustained:
            print(f"{row['cameras']:<16}{row['min_fps']:>9.2f}{row['mean_fps']:>10.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
