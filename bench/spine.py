"""End-to-end numbers of the spine, measured at a real WebSocket client.

Runs the system with the launcher (provider, worker, web; Redis from TC_REDIS_URL, the probe or embedded), starts
one camera on the sample video with the frame interval near zero (as fast as it goes), and counts for `--seconds`:
frames analysed per second, assessments per second, and the time from a frame's capture to its assessment at the
client. Baseline in the same command, after the system stopped: bare `Detector.detect` on frames of the same
video. The ratio pipeline fps / bare fps says what the rest of the path costs.

    .venv/bin/python bench/spine.py [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import websocket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import pct  # noqa: E402
from traffic_celery.embedded_redis import free_port  # noqa: E402
from traffic_celery.settings import Settings  # noqa: E402
from traffic_celery.vision.detection import Detector, configure_ultralytics_offline  # noqa: E402


def run_system(seconds: float, frame_interval: float, video: Path) -> dict[str, float]:
    web_port, provider_port = free_port(), free_port()
    env = {**os.environ, "TC_WEB_PORT": str(web_port), "TC_PROVIDER_PORT": str(provider_port),
           "TC_LLM_BASE_URL": f"http://127.0.0.1:{provider_port}/v1", "TC_FRAME_INTERVAL": str(frame_interval),
           "TC_REASSESS_INTERVAL": "1.0", "TC_ASSESS_MIN_INTERVAL": "1.0", "TC_PROVIDER_LATENCY": "0.3", "YOLO_OFFLINE": "1"}
    logs = Path(tempfile.mkdtemp(prefix="tc-bench-"))
    out = open(logs / "launcher.out", "wb")
    launcher = subprocess.Popen([sys.executable, "-m", "traffic_celery.launcher", "--processes",
                                 "provider,worker,results,web", "--log-dir", str(logs)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "is running" not in (logs / "launcher.out").read_text():
            if time.monotonic() > deadline or launcher.poll() is not None:
                raise SystemExit(f"the system did not start; see {logs}")
            time.sleep(0.2)
        ws = websocket.create_connection(f"ws://127.0.0.1:{web_port}/ws", timeout=5)
        ws.send(json.dumps({"type": "start_stream", "data": {"cameraId": "bench", "rtspUrl": str(video)}}))
        frames, assessments, latency, llm = 0, 0, [], []
        first_frame_at = None
        end = None
        print(f"measuring for {seconds:.0f}s after the first frame…", file=sys.stderr)
        while end is None or time.monotonic() < end:
            ws.settimeout(60)
            msg = json.loads(ws.recv())
            now = time.time()
            if msg["type"] == "detection_result":
                if first_frame_at is None:
                    first_frame_at, end = time.monotonic(), time.monotonic() + seconds
                frames += 1
            elif msg["type"] == "risk_assessment" and first_frame_at is not None:
                assessments += 1
                latency.append(now - msg["data"]["frameTimestamp"])
                llm.append(msg["data"]["llmLatency"])
        elapsed = time.monotonic() - first_frame_at
        ws.close()
        return {"pipeline_fps": frames / elapsed, "assessments_per_s": assessments / elapsed,
                "assessments": assessments, "latency_p50_s": pct(latency, 0.5), "latency_p95_s": pct(latency, 0.95),
                "llm_latency_p50_s": pct(llm, 0.5)}
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(60)
        out.close()


def bare_predict_fps(video: Path, frames: int) -> float:
    configure_ultralytics_offline()
    detector = Detector.from_settings(Settings())
    detector.warm_up()
    cap = cv2.VideoCapture(str(video))
    batch = [cap.read()[1] for _ in range(frames)]
    cap.release()
    started = time.monotonic()
    for frame in batch:
        detector.detect(frame)
    return frames / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--frame-interval", type=float, default=0.01)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    video = Settings().sample_video
    system = run_system(args.seconds, args.frame_interval, video)
    print("measuring bare detection on the same video…", file=sys.stderr)
    bare = bare_predict_fps(video, 30)
    rows = [("frames analysed / s (whole path)", system["pipeline_fps"]),
            ("frames / s, bare Detector.detect", bare),
            ("ratio pipeline / bare", system["pipeline_fps"] / bare),
            ("assessments / s", system["assessments_per_s"]),
            ("assessments in the run", system["assessments"]),
            ("frame -> assessment at client, p50 (s)", system["latency_p50_s"]),
            ("frame -> assessment at client, p95 (s)", system["latency_p95_s"]),
            ("  of which provider latency, p50 (s)", system["llm_latency_p50_s"])]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value:.3f}")
    if args.json:
        print(json.dumps({**system, "predict_fps": bare, "ratio": system["pipeline_fps"] / bare}))


if __name__ == "__main__":
    main()
