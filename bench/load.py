"""Load: many simulated cameras through the whole Celery path, measured at a WebSocket client.

Each simulated camera sends, `--fps` times a second, the traffic groups of a recorded frame: crops and features
recorded once from the sample video with the real detector (so YOLO is not the bottleneck), stored and
dispatched as a capture loop does it (`store.store_image`, `Dispatcher`: the router picks a key, `assess_group`
goes on `llm.<key>` with the callback linked). Every group of every frame is assessed, the worst case (the
scheduler normally sends a small fraction) in the saturation run. Worker processes call the fake provider, the callback worker stores
and publishes, the web tier relays to one WebSocket client subscribed to every camera.

Measured over `--duration` seconds after a warm-up:
- groups/s: assessments received by the client per second;
- latency from the frame to its `risk_assessment` at the client, minus the provider's own time for that call
  (`llmLatency`): p50/p95/p99;
- lost: tasks enqueued that never reached the client after a drain (must be 0), and dead letters;
- RSS growth of every process of the system over the measured run.

Three runs on the same processes, in one command: a one-camera baseline; the measured load, the cameras sending
`--rate` groups/s in all (default 50, twice the old system's target; the real scheduler sends about 13/s for 50
cameras of the sample video); and a saturation run where every group of every frame is sent, whose throughput
is the capacity. Compared with the baseline and with the old targets (25 groups/s, 2 s p95 end to end). With
`--json`, one JSON object last (the measured load's figures, plus `capacity_groups_per_s`).

    .venv/bin/python bench/load.py [--cameras 50] [--fps 2] [--duration 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import redis
import requests
import websocket

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import log, pct, write_keys_file  # noqa: E402
from traffic_celery import names, store  # noqa: E402
from traffic_celery.broker.config import producer_app  # noqa: E402
from traffic_celery.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from traffic_celery.llm.dispatch import Dispatcher  # noqa: E402
from traffic_celery.llm.keys import KeyPool  # noqa: E402
from traffic_celery.llm.router import build_router  # noqa: E402
from traffic_celery.settings import Settings  # noqa: E402

OLD_GROUPS_PER_S, OLD_P95_MS = 25.0, 2000.0
KEYS = {f"k{i}": 40 for i in range(1, 5)}  # four keys of 40 QPS: 160 calls/s of headroom


def record(frames: int) -> list[list[dict[str, Any]]]:
    """Groups (crop JPEG, features, members) of `frames` frames of the sample video, from the real pipeline."""
    import cv2  # noqa: PLC0415

    from traffic_celery.capture.loop import crop, encode_jpeg  # noqa: PLC0415
    from traffic_celery.vision.detection import shared_detector  # noqa: PLC0415
    from traffic_celery.vision.grouping import group_detections  # noqa: PLC0415
    from traffic_celery.vision.tracking import Tracker  # noqa: PLC0415

    settings = Settings()
    detector, tracker = shared_detector(settings), Tracker()
    cap = cv2.VideoCapture(str(settings.sample_video))
    recorded: list[list[dict[str, Any]]] = []
    while len(recorded) < frames:
        for _ in range(4):  # every 4th frame: 2.5 fps of the 10 fps video
            ok, frame = cap.read()
        if not ok:
            break
        groups = group_detections(detector.detect(frame, tracker), settings.group_link_factor,
                                  settings.min_group_size)
        if groups:
            recorded.append([{"jpeg": encode_jpeg(crop(frame, g.bbox), 85), "features": g.features.to_dict(),
                              "members": g.member_ids, "index": g.group_index} for g in groups])
    if not recorded:
        raise SystemExit(f"no traffic group found in {settings.sample_video}")
    return recorded


class System:
    """Redis, the fake provider, LLM workers, the callbacks' worker and the web tier, as processes."""

    def __init__(self, tmp: Path, workers: int, concurrency: int, provider_latency: float):
        self.tmp = tmp
        self.redis = EmbeddedRedis().start()
        self.r = redis.Redis.from_url(self.redis.url)
        keys_file = write_keys_file(tmp / "keys.yaml", KEYS, "sk-load", max_in_flight=64)
        provider_port, self.web_port = free_port(), free_port()
        self.env = {**os.environ, "TC_REDIS_URL": self.redis.url, "TC_LLM_KEYS_FILE": str(keys_file),
                    "TC_LLM_BASE_URL": f"http://127.0.0.1:{provider_port}/v1", "PYTHONPATH": str(REPO),
                    "TC_LOG_LEVEL": "WARNING", "TC_CAPTURE_IN_WEB": "false", "TC_WEB_PORT": str(self.web_port),
                    "TC_METRICS_DIR": str(tmp / "metrics")}
        self.env.pop("TC_LLM_API_KEYS", None)
        self.settings = Settings(redis_url=self.redis.url, llm_keys_file=keys_file)
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []
        self.spawn([sys.executable, "-m", "traffic_celery.fake_provider", "--port", str(provider_port),
                    "--latency", str(provider_latency)], "provider")
        for i in range(workers):
            self.spawn([sys.executable, "-m", "workers", "-Q", ",".join(f"llm.{k}" for k in KEYS), "--hostname",
                        f"load{i}@%h", "--pool", "threads", "--concurrency", str(concurrency)], f"worker{i}")
        self.spawn([sys.executable, "-m", "workers", "-Q", names.RESULTS_QUEUE, "--pool", "threads",
                    "--concurrency", "8", "--hostname", "loadresults@%h"], "results")
        self.spawn([sys.executable, "-m", "web"], "web")
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.wait(lambda: requests.get(self.url + "/api/health", timeout=1).json()["workers"]["ok"] and
                  len(requests.get(self.url + "/api/health", timeout=1).json()["workers"]["seen"]) == workers + 1,
                  90, "the web tier and the workers")
        self.dispatch = Dispatcher(producer_app(self.settings), build_router(self.settings, self.r,
                                                                         KeyPool.from_settings(self.settings)))

    def spawn(self, args: list[str], name: str) -> None:
        out = open(self.tmp / f"{name}.log", "ab")
        self.names.append(name)
        self.procs.append(subprocess.Popen(args, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{what} did not come up within {timeout:.0f}s; logs in {self.tmp}")

    def rss_mb(self) -> float:
        total = 0
        for proc in self.procs:
            try:
                p = psutil.Process(proc.pid)
                total += sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each process tree of the system, Redis and this benchmark."""
        trees = {name: proc.pid for name, proc in zip(self.names, self.procs, strict=False)}
        trees.update({"redis": self.redis.process.pid, "bench (cameras)": os.getpid()})
        used = {}
        for name, pid in trees.items():
            try:
                p = psutil.Process(pid)
                tree = [p] if pid == os.getpid() else [p, *p.children(recursive=True)]
                used[name] = sum(sum(c.cpu_times()[:2]) for c in tree)
            except psutil.NoSuchProcess:
                used[name] = 0.0
        return used

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        self.redis.stop()


class Viewer:
    """One WebSocket client subscribed to every camera; records when each assessment arrives."""

    def __init__(self, url: str, cameras: list[str]):
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + "/ws", timeout=10)
        self.got: dict[str, tuple[float, dict[str, Any]]] = {}
        for camera in cameras:
            self.ws.send(json.dumps({"type": "subscribe", "data": {"cameraId": camera}}))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                msg = json.loads(self.ws.recv())
            except Exception:
                return
            if msg["type"] == "risk_assessment":
                self.got.setdefault(msg["data"]["taskId"], (time.time(), msg["data"]))


def run(system: System, viewer: Viewer, recorded: list[list[dict[str, Any]]], cameras: int, fps: float,
        duration: float, label: str, fraction: float = 1.0) -> dict[str, Any]:
    """Every camera takes a recorded frame `fps` times a second for `duration` seconds and sends `fraction` of
    its groups (1.0: every group of every frame; a camera carries the remainder over to its next frames)."""
    sent: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def camera(n: int) -> None:
        period, frame_no, owed = 1.0 / fps, n % len(recorded), 0.0
        next_at = time.monotonic() + period * n / cameras  # cameras spread over one period
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            ts = time.time()
            groups = recorded[frame_no % len(recorded)]
            owed += fraction * len(groups)
            due, owed = groups[:int(owed)], owed - min(int(owed), len(groups))
            for g in due:
                task_id = system.dispatch({
                    "cameraId": f"load{n}", "groupId": f"g{g['index'] + 1}", "groupIndex": g["index"], "reason": "appeared",
                    "imageKey": store.store_image(system.r, g["jpeg"], 600), "features": g["features"],
                    "memberTrackIds": g["members"], "frameTimestamp": ts})
                with lock:
                    sent[task_id] = ts
            frame_no += 1
            next_at += period

    rss_before, cpu_before = system.rss_mb(), system.cpu_seconds()
    threads = [threading.Thread(target=camera, args=(n,), daemon=True) for n in range(cameras)]
    started, wall_start = time.monotonic(), time.time()
    for t in threads:
        t.start()
    while time.monotonic() - started < duration:
        time.sleep(5)
        log(f"[{label}] {time.monotonic() - started:4.0f}s  sent {len(sent):6d}  received "
            f"{sum(1 for t in list(sent) if t in viewer.got):6d}")
    stop.set()
    for t in threads:
        t.join()
    elapsed, wall_end = time.monotonic() - started, time.time()
    cpu = {name: round((used - cpu_before.get(name, 0.0)) / elapsed, 2) for name, used in system.cpu_seconds().items()}
    deadline = time.monotonic() + 60  # drain: what was sent must arrive
    while time.monotonic() < deadline and any(t not in viewer.got for t in list(sent)):
        time.sleep(0.5)
    rss_after = system.rss_mb()
    arrived = [viewer.got[t] for t in sent if t in viewer.got]
    missing = [t for t in sent if t not in viewer.got]
    stored = sum(1 for t in missing if system.r.exists(f"tc:done:{t}"))
    if missing:
        log(f"[{label}] {len(missing)} not at the client: {stored} stored (lost between Redis and the client), "
            f"{len(missing) - stored} never stored; e.g. {missing[:3]}; logs in {system.tmp}")
    latencies = [(at - data["frameTimestamp"] - data["llmLatency"]) * 1000 for at, data in arrived]
    in_window = sum(1 for at, _data in arrived if wall_start <= at <= wall_end)  # arrived while sending
    return {"cameras": cameras, "fps": fps, "seconds": round(elapsed, 1), "sent": len(sent),
            "groups_per_s": round(in_window / elapsed, 2), "p50_ms": round(pct(latencies, 0.5), 1),
            "p95_ms": round(pct(latencies, 0.95), 1), "p99_ms": round(pct(latencies, 0.99), 1),
            "lost": len(missing), "lost_after_store": stored, "dead_letters": system.r.xlen(names.DLQ),
            "rss_growth_mb": round(rss_after - rss_before, 1), "rss_mb": round(rss_after, 1),
            "cpu_cores_used": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the measured run")
    parser.add_argument("--rate", type=float, default=50.0, help="groups/s the cameras send in the measured "
                        "run (twice the old target; the scheduler sends about 13/s for 50 cameras on the sample "
                        "video); a second run sends every group of every frame to find the capacity")
    parser.add_argument("--saturation-duration", type=float, default=30.0)
    parser.add_argument("--baseline-duration", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2, help="LLM worker processes (thread pools)")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per LLM worker")
    parser.add_argument("--provider-latency", type=float, default=0.2)
    parser.add_argument("--frames", type=int, default=12, help="frames recorded from the sample video")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log(f"recording {args.frames} frames of traffic groups with the real detector ...")
    recorded = record(args.frames)
    per_frame = sum(len(f) for f in recorded) / len(recorded)
    log(f"  {per_frame:.1f} groups per frame; offered load {args.cameras * args.fps * per_frame:.0f} groups/s")
    with tempfile.TemporaryDirectory(prefix="tc-load-") as tmp:
        system = System(Path(tmp), args.workers, args.concurrency, args.provider_latency)
        try:
            cameras = [f"load{n}" for n in range(args.cameras)]
            viewer = Viewer(system.url, cameras)
            time.sleep(1.0)  # the subscriptions are in before the first assessment
            run(system, viewer, recorded, 2, args.fps, 5, "warm-up")
            base = run(system, viewer, recorded, 1, args.fps, args.baseline_duration, "baseline, 1 camera")
            offered = args.cameras * args.fps * per_frame
            load = run(system, viewer, recorded, args.cameras, args.fps, args.duration,
                       f"{args.cameras} cameras, {args.rate:.0f} groups/s", min(1.0, args.rate / offered))
            time.sleep(2)
            full = run(system, viewer, recorded, args.cameras, args.fps, args.saturation_duration,
                       f"{args.cameras} cameras, every group ({offered:.0f}/s)")
        finally:
            system.stop()
    runs = (base, load, full)
    rows = [("cameras", *(r["cameras"] for r in runs)), ("groups sent", *(r["sent"] for r in runs)),
            *((label, *(r[key] for r in runs)) for label, key in (
                ("groups/s at the client", "groups_per_s"), ("p50 ms (frame to client, minus LLM)", "p50_ms"),
                ("p95 ms", "p95_ms"), ("p99 ms", "p99_ms"), ("lost", "lost"), ("dead letters", "dead_letters"),
                ("RSS growth MB (all processes)", "rss_growth_mb")))]
    print(f"{'':38s}{'baseline':>12s}{'load':>12s}{'saturation':>12s}")
    for name, b, v, f in rows:
        print(f"{name:38s}{b!s:>12s}{v!s:>12s}{f!s:>12s}")
    ratios = {"groups_per_s / old target 25": round(load["groups_per_s"] / OLD_GROUPS_PER_S, 2),
              "capacity / old target 25": round(full["groups_per_s"] / OLD_GROUPS_PER_S, 2),
              "old target 2000 ms / p95": round(OLD_P95_MS / load["p95_ms"], 2) if load["p95_ms"] else None,
              "p95 loaded / p95 baseline": round(load["p95_ms"] / base["p95_ms"], 2) if base["p95_ms"] else None}
    for name, value in ratios.items():
        print(f"{name:38s}{'':>12s}{value!s:>12s}")
    print("CPU cores used while sending, by process (load, saturation):")
    for name, cores in sorted(load["cpu_cores_used"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:36s}{cores:>12.2f}{full['cpu_cores_used'].get(name, 0):>12.2f}")
    if args.json:
        print(json.dumps({**load, "capacity_groups_per_s": full["groups_per_s"], "baseline": base,
                          "saturation": full, "ratios": ratios}))
    return 0 if load["lost"] == full["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
