"""Load: many simulated cameras through the whole Celery path, measured at a WebSocket client, with the CPU each
process spends per group, the Redis round trips per group and, when a target is missed, a profile of where the
CPU goes.

Each simulated camera sends, `--fps` times a second, the traffic groups of a recorded frame: crops and features
recorded once from the sample video with the real detector (so YOLO is not the bottleneck), stored and
dispatched as a capture loop does it (`store.store_image`, `Dispatcher`: the router picks a key, `assess_group`
goes on `llm.<key>`). LLM worker processes (`--workers` x `--concurrency` threads) call the fake provider and
store and publish the assessment (the `results` worker of the Procfile runs too, idle unless a callback
linked by an older producer comes), the web tier relays to one WebSocket client
subscribed to every camera. Everything, Redis included, runs on this machine's cores, which other processes may
share (the table says how busy they were).

Runs on the same processes, in one command:
- baseline: one camera (every group of its frames, about 5/s);
- load: `--cameras` cameras sending `--rate` groups/s in all (50: twice the old target; the real scheduler sends
  about 13/s for 50 cameras of the sample video): latency and CPU per group;
- capacity: the cameras offering `--capacity-rate` groups/s (300, above the 250 target): the throughput at the
  client is the capacity.

Measured over each run (after a warm-up):
- groups/s: assessments received by the client per second;
- overhead: from the frame to its `risk_assessment` at the client minus the provider's own time for the call
  (`llmLatency`), p50/p95/p99, split into frame to call, call to stored, stored to client;
- lost: tasks enqueued that never reached the client after a drain (must be 0), and dead letters;
- CPU ms per group of every process (user + system CPU of its process tree while sending, divided by the groups
  the client received; the simulated cameras' by the groups they sent), and the kernel's share of it;
- RSS growth of every process of the system over the run.

Then Redis round trips per group and process (MONITOR, on a light run of its own) and, when a target is missed
(`--profile auto`; `on` always), a profile run: py-spy samples every process (`--gil`: Python CPU time;
speedscope files under `--profile-dir`), summarised as CPU ms per group of each operation of the path. The floor
printed is the capacity the measured CPU per group allows with every core of the machine. The key pool is
`--keys` keys of `--key-qps` QPS each, so the limits are not the bottleneck. One JSON object is printed last.

    .venv/bin/python bench/load.py [--cameras 50] [--duration 60] [--capacity-rate 300] [--profile on]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
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
TARGET_CAPACITY, TARGET_P95_MS = 250.0, 25.0
CAMERAS = "cameras (bench)"  # the simulated cameras' threads: their CPU is per group sent
CLIENT = "client (bench)"  # the rest of the benchmark's process: the WebSocket client and the bookkeeping


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

    def __init__(self, tmp: Path, args: argparse.Namespace):
        self.tmp = tmp
        self.redis = EmbeddedRedis().start()
        self.r = redis.Redis.from_url(self.redis.url)
        self.keys = {f"k{i}": args.key_qps for i in range(1, args.keys + 1)}
        keys_file = write_keys_file(tmp / "keys.yaml", self.keys, "sk-load", max_in_flight=args.max_in_flight)
        provider_port, self.web_port = free_port(), free_port()
        self.env = {**os.environ, "TC_REDIS_URL": self.redis.url, "TC_LLM_KEYS_FILE": str(keys_file),
                    "TC_LLM_BASE_URL": f"http://127.0.0.1:{provider_port}/v1", "PYTHONPATH": str(REPO),
                    "TC_LOG_LEVEL": "WARNING", "TC_CAPTURE_IN_WEB": "false", "TC_WEB_PORT": str(self.web_port),
                    "TC_METRICS_DIR": str(tmp / "metrics")}
        self.env.pop("TC_LLM_API_KEYS", None)
        self.env.update(dict(item.split("=", 1) for item in args.env))
        self.settings = Settings(redis_url=self.redis.url, llm_keys_file=keys_file)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []
        self.spawn([sys.executable, "-m", "traffic_celery.fake_provider", "--port", str(provider_port),
                    "--latency", str(args.provider_latency)], "provider")
        for i in range(args.workers):
            self.spawn([sys.executable, "-m", "workers", "-Q", ",".join(f"llm.{k}" for k in self.keys), "--hostname",
                        f"load{i}@%h", "--pool", args.pool, "--concurrency", str(args.concurrency)], f"worker{i}")
        self.spawn([sys.executable, "-m", "workers", "-Q", names.RESULTS_QUEUE, "--pool", "threads",
                    "--concurrency", str(args.results_concurrency), "--hostname", "loadresults@%h"], "results")
        self.spawn([sys.executable, "-m", "web"], "web")
        self.url = f"http://127.0.0.1:{self.web_port}"

        def healthy() -> bool:
            workers = requests.get(self.url + "/api/health", timeout=1).json()["workers"]
            return bool(workers["ok"]) and len(workers["seen"]) == args.workers + 1

        self.wait(healthy, 90, "the web tier and the workers")
        self.dispatch = Dispatcher(producer_app(self.settings), build_router(self.settings, self.r,
                                                                         KeyPool.from_settings(self.settings)))
        self.recorded: list[list[dict[str, Any]]] = []
        self.camera_threads: set[int] = set()  # native ids of the simulated cameras' threads (for their CPU)
        self.camera_cpu_done = 0.0  # CPU seconds of the camera threads that ended

    def spawn(self, args: list[str], name: str) -> None:
        out = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115  (the process keeps it)
        self.names.append(name)
        self.procs.append(subprocess.Popen(args, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{what} did not come up within {timeout:.0f}s; logs in {self.tmp}")

    def pids(self) -> dict[str, int]:
        """The main pid of each process of the system, Redis's, and this benchmark's."""
        pids = {name: proc.pid for name, proc in zip(self.names, self.procs, strict=True)}
        assert self.redis.process is not None  # started in __init__
        return {**pids, "redis": self.redis.process.pid, CAMERAS: os.getpid()}

    def rss_mb(self) -> float:
        total = 0
        for proc in self.procs:
            try:
                p = psutil.Process(proc.pid)
                total += sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def cpu_seconds(self) -> tuple[dict[str, float], dict[str, float]]:
        """CPU seconds (user + system, and system alone) used so far by each process tree of the system, Redis,
        the simulated cameras' threads and the rest of this benchmark's process (the WebSocket client)."""
        used, system = {}, {}
        for name, pid in self.pids().items():
            try:
                p = psutil.Process(pid)
                if pid == os.getpid():
                    threads = [t for t in p.threads() if t.id in self.camera_threads]
                    cameras = self.camera_cpu_done + sum(t.user_time + t.system_time for t in threads)
                    used[CAMERAS], system[CAMERAS] = cameras, sum(t.system_time for t in threads)
                    used[CLIENT], system[CLIENT] = sum(p.cpu_times()[:2]) - cameras, 0.0
                    continue
                times = [c.cpu_times() for c in [p, *p.children(recursive=True)]]
                used[name], system[name] = sum(t.user + t.system for t in times), sum(t.system for t in times)
            except psutil.NoSuchProcess:
                used[name], system[name] = 0.0, 0.0
        return used, system

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


def thread_cpu() -> float:
    """CPU seconds of the calling thread (Linux: per-thread clock)."""
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def redis_calls(r: redis.Redis) -> dict[str, int]:
    """Calls so far of each Redis command (`INFO commandstats`), the INFO itself excluded."""
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
            if name not in ("cmdstat_info",)}


def run(system: System, viewer: Viewer, recorded: list[list[dict[str, Any]]], cameras: int, rate: float,
        duration: float, label: str, fps: float = 2.0) -> dict[str, Any]:
    """`cameras` cameras each take a recorded frame `fps` times a second (raised when the frames' groups cannot
    make `rate`) for `duration` seconds and send groups so that all send `rate` groups/s (a camera carries
    the remainder over to its next frames)."""
    per_frame = sum(len(f) for f in recorded) / len(recorded)
    fps = max(fps, rate / (cameras * per_frame))
    fraction = rate / (cameras * fps * per_frame)
    sent: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def camera(n: int) -> None:
        system.camera_threads.add(threading.get_native_id())
        period, frame_no, owed = 1.0 / fps, n % len(recorded), 0.0
        next_at = time.monotonic() + period * n / cameras  # cameras spread over one period
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            ts = time.time()
            groups = recorded[frame_no % len(recorded)]
            owed += fraction * len(groups)
            due, owed = groups[:int(owed)], owed - min(int(owed), len(groups))
            for g in due:
                task_id = system.dispatch({
                    "cameraId": f"load{n}", "groupId": f"g{g['index'] + 1}", "groupIndex": g["index"],
                    "reason": "appeared", "imageKey": store.store_image(system.r, g["jpeg"], 600),
                    "features": g["features"], "memberTrackIds": g["members"], "frameTimestamp": ts})
                with lock:
                    sent[task_id] = ts
            frame_no += 1
            next_at += period
        with lock:
            system.camera_cpu_done += thread_cpu()
            system.camera_threads.discard(threading.get_native_id())

    load_before = os.getloadavg()[0]
    commands_before = redis_calls(system.r)
    rss_before, (cpu_before, sys_before) = system.rss_mb(), system.cpu_seconds()
    machine_before = psutil.cpu_times()
    threads = [threading.Thread(target=camera, args=(n,), daemon=True) for n in range(cameras)]
    started, wall_start = time.monotonic(), time.time()
    for t in threads:
        t.start()
    while time.monotonic() - started < duration:
        time.sleep(min(5.0, max(0.0, duration - (time.monotonic() - started))))
        log(f"[{label}] {time.monotonic() - started:4.0f}s  sent {len(sent):6d}  received "
            f"{sum(1 for t in list(sent) if t in viewer.got):6d}")
    stop.set()
    for t in threads:
        t.join()
    elapsed, wall_end = time.monotonic() - started, time.time()
    (cpu_after, sys_after), machine_after = system.cpu_seconds(), psutil.cpu_times()
    commands = Counter(redis_calls(system.r))
    commands.subtract(commands_before)
    load_after = os.getloadavg()[0]
    in_window = sum(1 for t in list(sent) if t in viewer.got and wall_start <= viewer.got[t][0] <= wall_end)
    deadline = time.monotonic() + 120  # drain: what was sent must arrive
    while time.monotonic() < deadline and any(t not in viewer.got for t in list(sent)):
        time.sleep(0.5)
    rss_after = system.rss_mb()
    arrived = [viewer.got[t] for t in sent if t in viewer.got]
    missing = [t for t in sent if t not in viewer.got]
    stored = sum(1 for t in missing if system.r.exists(f"tc:done:{t}"))
    if missing:
        log(f"[{label}] {len(missing)} not at the client: {stored} stored (lost between Redis and the client), "
            f"{len(missing) - stored} never stored; e.g. {missing[:3]}; logs in {system.tmp}")
    never = [t for t in missing if not system.r.exists(f"tc:done:{t}")]
    if never:  # keep the evidence: the temporary folder goes with the run
        kept = REPO / "test-artifacts" / f"load-logs-{label.split(':')[0]}-{int(time.time())}"
        shutil.copytree(system.tmp, kept, ignore=shutil.ignore_patterns("metrics"), dirs_exist_ok=True)
        mentions = [f"{path.name}: {line.strip()[:300]}" for path in sorted(kept.glob("*.log"))
                    for line in path.read_text(errors="replace").splitlines() if never[0] in line]
        log(f"[{label}] the processes' logs are kept in {kept}; what they say of {never[0]}: "
            f"{mentions[:5] or 'nothing'}")
    latencies = [(at - data["frameTimestamp"] - data["llmLatency"]) * 1000 for at, data in arrived]
    # where it goes: frame to the call (dispatch, queue, worker pickup, limiter slot: the job's queueWait is from
    # its enqueue, a millisecond after the frame here), the call's end to the stored assessment (parse, the
    # store-and-publish script), stored to the client (pub/sub, relay, WebSocket)
    to_call = [d.get("queueWait", 0.0) * 1000 for _at, d in arrived]
    after = [((d.get("assessedAt") or at) - d["frameTimestamp"] - d["llmLatency"] - d.get("queueWait", 0.0)) * 1000
             for at, d in arrived]
    relay = [(at - (d.get("assessedAt") or at)) * 1000 for at, d in arrived]
    parts = {name: [round(pct(values, 0.5), 1), round(pct(values, 0.95), 1)]
             for name, values in (("call", to_call), ("after", after), ("relay", relay))}
    cpu = {name: max(0.0, used - cpu_before.get(name, 0.0)) for name, used in cpu_after.items()}
    sys_cpu = {name: max(0.0, used - sys_before.get(name, 0.0)) for name, used in sys_after.items()}
    busy = sum(getattr(machine_after, f) - getattr(machine_before, f) for f in ("user", "system", "nice", "irq",
                                                                               "softirq", "steal"))
    ours = sum(cpu.values())
    per_group = {name: round(1000 * used / max(1, len(sent) if name == CAMERAS else in_window), 2)
                 for name, used in cpu.items()}
    return {"cameras": cameras, "fps": round(fps, 2), "offered_groups_per_s": round(rate, 1),
            "seconds": round(elapsed, 1),
            "sent": len(sent), "groups_per_s": round(in_window / elapsed, 2),
            "p50_ms": round(pct(latencies, 0.5), 1), "p95_ms": round(pct(latencies, 0.95), 1),
            "p99_ms": round(pct(latencies, 0.99), 1), "parts": parts, "lost": len(missing),
            "lost_after_store": stored,
            "dead_letters": system.r.xlen(names.DLQ), "rss_growth_mb": round(rss_after - rss_before, 1),
            "rss_mb": round(rss_after, 1), "cpu_cores_used": {n: round(c / elapsed, 3) for n, c in cpu.items()},
            "cpu_ms_per_group": per_group,
            "system_cpu_share": {n: round(sys_cpu[n] / cpu[n], 2) if cpu[n] else 0.0 for n in cpu},
            "cpu_ms_per_group_total": round(1000 * ours / max(1, in_window), 2),
            "redis_commands_per_group": round(sum(commands.values()) / max(1, in_window), 1),
            "redis_commands": {c: round(n / max(1, in_window), 2) for c, n in commands.most_common(16)},
            "machine_cores_busy": round(busy / elapsed, 2), "others_cores_busy": round(max(0.0, busy - ours)
                                                                                        / elapsed, 2),
            "loadavg": [round(load_before, 2), round(load_after, 2)]}


# --- profiles ---------------------------------------------------------------------------------------------------

def start_profiles(pids: dict[str, int], out: Path, seconds: float, rate: int) -> dict[str, subprocess.Popen[bytes]]:
    """One `py-spy record` per process (with its subprocesses), speedscope format, into `out`."""
    spy = Path(sys.executable).parent / "py-spy"
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, pid in pids.items():
        if name == "redis":
            continue
        path = out / f"{name.split()[0]}.speedscope.json"
        # --gil: only the samples of the thread holding the GIL, i.e. the Python CPU time (a thread blocked in a
        # socket read holds no GIL); --subprocesses for prefork pools, never for this process (its children are
        # the system)
        children = [] if pid == os.getpid() else ["--subprocesses"]
        procs[name] = subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
             "--format", "speedscope", "--function", "--gil", "--nonblocking", *children,
             "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return procs


#: what a sample was doing, by the first of these (in this order) whose function is on its stack: the operations
#: of the path, then Celery's and kombu's own machinery around them
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("LLM HTTP call (urllib3)", ("send@traffic_celery.llm",)),
    ("limiter scripts (acquire, confirm, finish)", ("KeyLimiter.",)),
    ("router script", ("Router.",)),
    ("crop store/load", ("store_image@", "load_image@")),
    ("store-and-publish script", ("store_assessment@",)),
    ("callback publish (Celery send_task)", ("_dispatch_callbacks_and_chain@",)),
    ("task publish (Celery send_task)", ("Celery.send_task@",)),
    ("result backend (assess_group's state)", ("Backend.mark_as_done@", "Backend.store_result@")),
    ("task events (Flower)", ("EventDispatcher.", "Request.send_event@", "_flush_events")),
    ("ack (kombu QoS)", ("Message.ack@",)),
    ("message receive (BRPOP, kombu QoS, Celery request)", ("Transport.on_readable@", "on_poll_start",
                                                              "Transport._deliver@")),
    ("task code (validation, prompt, parse, metrics)", ("assess_group@", "on_assessment@", "Dispatcher.__call__@")),
    ("Celery task machinery (trace, signals, pool)", ("trace_task@", "apply_target@", "_WorkItem.run@")),
    ("pub/sub relay (web tier)", ("EventHub.",)),
    ("WebSocket send (web tier)", ("Client._send_loop@",)),
    ("WebSocket client (bench)", ("Viewer._read@",)),
    ("fake provider (HTTP server)", ("Handler.",)),
    ("worker event loop (timers, polling)", ("Hub.create_loop@", "asynloop@")),
]


def _package(file: str) -> str:
    """The package a frame's file belongs to: `celery`, `kombu`, `redis`, `traffic_celery.llm`, `json`..."""
    parts = tuple(part for part in file.removesuffix(".py").split("/") if part)
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
        return rest[0] if rest else "?"
    for root in ("traffic_celery", "workers", "web", "bench"):
        if root in parts:
            rest = parts[parts.index(root):]
            return ".".join(rest[:2]) if root == "traffic_celery" and len(rest) > 2 else root
    return parts[-1] if parts else "?"  # the standard library: the module


def summarise_profile(path: Path, top: int = 8) -> dict[str, Any]:
    """Shares of the samples of one speedscope file (threads and subprocesses together; with --gil, the samples
    are the Python CPU time): per operation (:data:`CATEGORIES`, a function and everything it calls), and the
    functions where the most time is spent themselves (self)."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    keys = [f"{f['name']}@{_package(f.get('file', '?'))}" for f in frames]
    self_n: Counter[int] = Counter()
    by_category: Counter[str] = Counter()
    samples = 0.0
    for prof in doc["profiles"]:
        weights = prof.get("weights") or [1] * len(prof["samples"])
        for stack, weight in zip(prof["samples"], weights, strict=True):
            if not stack:
                continue
            samples += weight
            self_n[stack[-1]] += weight
            on_stack = [keys[i] for i in stack]
            for name, needles in CATEGORIES:
                if any(needle in key for key in on_stack for needle in needles):
                    by_category[name] += weight
                    break
            else:
                by_category["other"] += weight

    def share(n: float) -> float:
        return round(100 * n / samples, 1) if samples else 0.0

    return {"samples": round(samples, 2),
            "by_operation": {name: share(n) for name, n in by_category.most_common()},
            "top_self": [{"function": keys[i].replace("@", " (") + ")", "self_pct": share(n)}
                         for i, n in self_n.most_common(top)]}


def profile(system: System, viewer: Viewer, recorded: list[list[dict[str, Any]]], args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    """A run at the measured load's rate while py-spy samples every process; the summary of each."""
    seconds = args.profile_duration
    spies = start_profiles(system.pids(), out, seconds, args.profile_rate)
    result = run(system, viewer, recorded, args.cameras, args.profile_load, seconds + 2, "profile")
    summaries = {}
    for name, spy in spies.items():
        try:
            _out, err = spy.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = b"timed out"
        path = out / f"{name.split()[0]}.speedscope.json"
        if not path.exists():
            log(f"no profile of {name}: {err.decode(errors='replace').strip()[-200:]}")
            continue
        summaries[name] = summarise_profile(path)
    return {"run": result, "processes": summaries, "dir": str(out)}


# --- Redis round trips, per process -------------------------------------------------------------------------------

def round_trips(system: System, seconds: float = 8.0, rate: float = 20.0) -> dict[str, Any]:
    """Commands each process sends to Redis per group, from Redis's MONITOR over a short, light run (MONITOR
    slows Redis down: never during the measured runs). A MULTI...EXEC block counts as one round trip; what a Lua
    script runs is not a round trip and is counted apart."""
    owners: dict[int, str] = {}  # local port of a connection to Redis -> the process that owns it
    port = int(system.redis.url.rsplit(":", 1)[1].split("/")[0])
    for name, pid in system.pids().items():
        if name == "redis":
            continue
        try:
            procs = [psutil.Process(pid)]
            if pid != os.getpid():
                procs += procs[0].children(recursive=True)
            for proc in procs:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == port:
                        owners[conn.laddr.port] = "cameras + client (bench)" if name == CAMERAS else name
        except psutil.NoSuchProcess:
            continue
    trips: Counter[str] = Counter()
    in_scripts = 0
    in_multi: set[str] = set()
    stop = threading.Event()
    ready = threading.Event()

    def listen() -> None:
        nonlocal in_scripts
        with redis.Redis.from_url(system.redis.url).monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            for cmd in monitor.listen():
                if stop.is_set():
                    return
                if cmd.get("client_type") == "lua":
                    in_scripts += 1
                    continue
                client = str(cmd.get("client_port", ""))
                name = cmd["command"].split(" ", 1)[0].upper()
                if name in ("MULTI", "EXEC"):
                    (in_multi.add if name == "MULTI" else in_multi.discard)(client)
                    if name == "EXEC":
                        trips[owners.get(int(client or 0), "other")] += 1
                    continue
                if client not in in_multi:
                    trips[owners.get(int(client or 0), "other")] += 1

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(5)
    sent = {"n": 0}
    end = time.monotonic() + seconds
    group = system.recorded[0][0]
    while time.monotonic() < end:
        system.dispatch({"cameraId": "load0", "groupId": "g1", "groupIndex": group["index"], "reason": "appeared",
                         "imageKey": store.store_image(system.r, group["jpeg"], 600), "features": group["features"],
                         "memberTrackIds": group["members"], "frameTimestamp": time.time()})
        sent["n"] += 1
        time.sleep(1.0 / rate)
    time.sleep(1.5)  # the last ones through
    stop.set()
    system.r.ping()  # wakes the listener so that it sees the stop
    thread.join(5)
    n = max(1, sent["n"])
    per = {name: round(count / n, 1) for name, count in trips.most_common()}
    return {"groups": n, "round_trips_per_group": per, "total": round(sum(trips.values()) / n, 1),
            "commands_in_scripts_per_group": round(in_scripts / n, 1)}


# --- the report -------------------------------------------------------------------------------------------------

def print_table(runs: dict[str, dict[str, Any]]) -> None:
    labels = list(runs)

    def row(name: str, values: list[Any]) -> None:
        print(f"{name:44s}" + "".join(f"{v!s:>18s}" for v in values))

    row("", labels)
    for name, key in (("cameras", "cameras"), ("groups/s offered", "offered_groups_per_s"),
                      ("groups sent", "sent"), ("groups/s at the client (capacity: last)", "groups_per_s"),
                      ("p50 ms overhead (frame to client - LLM)", "p50_ms"), ("p95 ms overhead", "p95_ms"),
                      ("p99 ms overhead", "p99_ms")):
        row(name, [r[key] for r in runs.values()])
    for part, label in (("call", "to the call"), ("after", "call to stored"), ("relay", "stored to client")):
        row(f"  p50 / p95 ms: {label}", [f"{r['parts'][part][0]:.0f} / {r['parts'][part][1]:.0f}"
                                          for r in runs.values()])
    for name, key in (("lost", "lost"), ("dead letters", "dead_letters"),
                      ("RSS growth MB (all processes)", "rss_growth_mb"),
                      ("CPU ms per group, all processes", "cpu_ms_per_group_total"),
                      ("Redis commands per group (with scripts')", "redis_commands_per_group")):
        row(name, [r[key] for r in runs.values()])
    row("cores busy: ours / others", [f"{r['machine_cores_busy'] - r['others_cores_busy']:.2f} / "
                                      f"{r['others_cores_busy']:.2f}" for r in runs.values()])
    row("load average before, after", [f"{a:.1f}, {b:.1f}" for a, b in (r["loadavg"] for r in runs.values())])
    print("CPU ms per group, by process (kernel's share):")
    last = runs[labels[-1]]["cpu_ms_per_group"]
    for name in sorted(last, key=lambda n: -last[n]):
        row(f"  {name}", [f"{r['cpu_ms_per_group'].get(name, 0.0):.2f} ({r['system_cpu_share'].get(name, 0):.0%})"
                          for r in runs.values()])


def print_profile(prof: dict[str, Any]) -> None:
    run_ = prof["run"]
    per_group = run_["cpu_ms_per_group"]
    print(f"Profile (py-spy --gil, {run_['groups_per_s']} groups/s): CPU ms per group of each operation (share of "
          f"the process), and where the most time is spent itself; raw profiles in {prof['dir']}")
    for name, summary in sorted(prof["processes"].items(), key=lambda kv: -per_group.get(kv[0], 0.0)):
        if not summary["samples"]:
            continue
        cost = per_group.get(name, 0.0)
        print(f"  {name}: {cost:.2f} ms per group")
        for op, pct_ in summary["by_operation"].items():
            if pct_ >= 1.0:
                print(f"    {cost * pct_ / 100:6.2f} ms {pct_:5.1f}%  {op}")
        print("    self: " + ", ".join(f"{f['function']} {f['self_pct']}%" for f in summary["top_self"][:5]))


def verdict(runs: dict[str, dict[str, Any]], trips: dict[str, Any] | None) -> dict[str, Any]:
    """The targets, met or not; and the floor: the capacity if the path had every core of this machine at the
    CPU per group measured at capacity (or, without a capacity run, under load: the idle costs of every process,
    its polls and heartbeats, spread over fewer groups there, so that floor is lower)."""
    out: dict[str, Any] = {}
    load, capacity = runs.get("load"), runs.get("capacity")
    if capacity:
        out["capacity_groups_per_s"] = capacity["groups_per_s"]
        out["capacity_met"] = capacity["groups_per_s"] >= TARGET_CAPACITY
    if load:
        out["p95_ms"] = load["p95_ms"]
        out["p95_met"] = load["p95_ms"] <= TARGET_P95_MS
    basis = capacity or load
    if basis:
        cores = psutil.cpu_count() or 1
        out["floor_basis"] = "capacity" if capacity else "load"
        out["cpu_budget_ms_per_group"] = round(1000 * cores / TARGET_CAPACITY, 2)
        out["cpu_ms_per_group"] = basis["cpu_ms_per_group_total"]
        out["floor_capacity_all_cores"] = round(1000 * cores / basis["cpu_ms_per_group_total"], 1)
        provider = basis["cpu_ms_per_group"].get("provider", 0.0) + basis["cpu_ms_per_group"].get(CLIENT, 0.0)
        out["floor_capacity_without_test_doubles"] = round(1000 * cores / (basis["cpu_ms_per_group_total"] - provider),
                                                           1)
    if trips:
        out["redis_round_trips_per_group"] = trips["total"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the measured load run")
    parser.add_argument("--rate", type=float, default=50.0, help="groups/s the cameras send in the measured run "
                        "(twice the old target; the scheduler sends about 13/s for 50 cameras of the sample video)")
    parser.add_argument("--capacity-rate", type=float, default=300.0, help="groups/s offered in the capacity run "
                        "(above the 250 target); its throughput at the client is the capacity")
    parser.add_argument("--capacity-duration", type=float, default=30.0)
    parser.add_argument("--baseline-duration", type=float, default=15.0)
    parser.add_argument("--runs", default="baseline,load,capacity", help="which runs, in order")
    parser.add_argument("--workers", type=int, default=2, help="LLM worker processes")
    parser.add_argument("--pool", default="threads", help="the LLM workers' pool: threads, prefork, solo")
    parser.add_argument("--concurrency", type=int, default=48,
                        help="threads (or processes) per LLM worker (48: 2 workers x 48 slots over 0.2 s calls "
                        "serve 480 calls/s, above the 300/s the capacity run offers; with 32 the slots, not the "
                        "CPU, capped capacity near 250)")
    parser.add_argument("--results-concurrency", type=int, default=8, help="threads of the callbacks' worker")
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--key-qps", type=float, default=100.0, help="each key's QPS (4 x 100: never the limit)")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--provider-latency", type=float, default=0.2)
    parser.add_argument("--frames", type=int, default=12, help="frames recorded from the sample video")
    parser.add_argument("--env", action="append", default=[], metavar="TC_X=V",
                        help="a setting for every process of the system (repeatable)")
    parser.add_argument("--profile", choices=("auto", "on", "off"), default="auto",
                        help="a profile run after the measured ones (auto: when a target is missed)")
    parser.add_argument("--profile-duration", type=float, default=15.0)
    parser.add_argument("--profile-load", type=float, default=100.0, help="groups/s of the profile run")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--profile-dir", type=Path, default=REPO / "test-artifacts" / "load-profiles")
    parser.add_argument("--no-round-trips", action="store_true", help="skip counting Redis round trips (MONITOR)")
    parser.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = parser.parse_args()
    log(f"recording {args.frames} frames of traffic groups with the real detector ...")
    recorded = record(args.frames)
    groups = [g for f in recorded for g in f]
    per_frame = len(groups) / len(recorded)
    log(f"  {per_frame:.1f} groups per frame; crops {sum(len(g['jpeg']) for g in groups) / 1024 / len(groups):.1f} KiB")
    plan = {"baseline": ("baseline", 1, args.fps * per_frame, args.baseline_duration),
            "load": ("load", args.cameras, args.rate, args.duration),
            "capacity": ("capacity", args.cameras, args.capacity_rate, args.capacity_duration)}
    runs: dict[str, dict[str, Any]] = {}
    prof: dict[str, Any] | None = None
    trips: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="tc-load-") as tmp:
        system = System(Path(tmp), args)
        system.recorded = recorded
        try:
            viewer = Viewer(system.url, [f"load{n}" for n in range(args.cameras)])
            time.sleep(1.0)  # the subscriptions are in before the first assessment
            run(system, viewer, recorded, 2, 10, 5, "warm-up")
            for name in filter(None, args.runs.split(",")):
                label, cameras, rate, duration = plan[name]
                runs[label] = run(system, viewer, recorded, cameras, rate, duration,
                                  f"{label}: {cameras} cameras, {rate:.0f} groups/s")
                time.sleep(2)
            if not args.no_round_trips:
                log("counting Redis round trips (MONITOR) ...")
                trips = round_trips(system)
            missed = not all(v for k, v in verdict(runs, None).items() if k.endswith("_met"))
            if args.profile == "on" or (args.profile == "auto" and missed):
                log("profiling every process (py-spy) ...")
                prof = profile(system, viewer, recorded, args, args.profile_dir)
        finally:
            system.stop()
    if runs:
        print_table(runs)
    if trips:
        print(f"Redis round trips per group (MONITOR, {trips['groups']} groups at 20/s): "
              + ", ".join(f"{n} {c}" for n, c in trips["round_trips_per_group"].items())
              + f"; {trips['commands_in_scripts_per_group']} more commands inside Lua scripts")
    load, capacity, base = runs.get("load"), runs.get("capacity"), runs.get("baseline")
    ratios: dict[str, float | None] = {}
    if capacity:
        ratios["capacity / target 250"] = round(capacity["groups_per_s"] / TARGET_CAPACITY, 2)
        ratios["capacity / offered"] = round(capacity["groups_per_s"] / capacity["offered_groups_per_s"], 2)
    if load and load["p95_ms"]:
        ratios["target 25 ms / p95 at load"] = round(TARGET_P95_MS / load["p95_ms"], 2)
        ratios["old target 2000 ms / p95 at load"] = round(OLD_P95_MS / load["p95_ms"], 2)
        if base and base["p95_ms"]:
            ratios["p95 at load / p95 baseline"] = round(load["p95_ms"] / base["p95_ms"], 2)
        if base and base["cpu_ms_per_group_total"]:
            ratios["CPU per group at load / baseline"] = round(load["cpu_ms_per_group_total"]
                                                               / base["cpu_ms_per_group_total"], 2)
    for name, value in ratios.items():
        print(f"{name:44s}{value!s:>18s}")
    result = verdict(runs, trips)
    if "capacity_met" in result:
        print(f"target capacity >= {TARGET_CAPACITY:.0f} groups/s: {result['capacity_groups_per_s']} "
              f"({'met' if result['capacity_met'] else 'missed'})")
    if "p95_met" in result:
        print(f"target p95 overhead <= {TARGET_P95_MS:.0f} ms at {args.rate:.0f} groups/s: {result['p95_ms']} "
              f"({'met' if result['p95_met'] else 'missed'})")
    if "floor_basis" in result:
        print(f"floor (CPU of the {result['floor_basis']} run): {result['cpu_ms_per_group']} CPU ms per group against a budget of "
              f"{result['cpu_budget_ms_per_group']} ({psutil.cpu_count()} cores / {TARGET_CAPACITY:.0f} groups/s): "
              f"at most {result['floor_capacity_all_cores']} groups/s with every core ours, "
              f"{result['floor_capacity_without_test_doubles']} without the fake provider and the bench's client")
    if prof is not None:
        print_profile(prof)
    summary = {k: v for k, v in (load or {}).items()}
    summary.update({"capacity_groups_per_s": capacity["groups_per_s"] if capacity else None, "targets": result,
                    "runs": runs, "ratios": ratios, "round_trips": trips,
                    "profile": prof["processes"] if prof else None,
                    "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    print(json.dumps(summary))
    lost = sum(r["lost"] for r in runs.values())
    return 0 if lost == 0 and not math.isnan(sum(r["p95_ms"] for r in runs.values())) else 1


if __name__ == "__main__":
    sys.exit(main())
