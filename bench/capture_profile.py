"""Where a capture process's CPU goes, per analysed frame, and what a setting changes: one command.

    .venv/bin/python bench/capture_profile.py                 # 1 camera, then 18 with turns off and on, ~3 min
    .venv/bin/python bench/capture_profile.py --cameras 21 --no-baseline --base "" --new TC_YOLO_INTERPRETERS=32

N cameras of the sample video at 2 fps (real-time pace, looped, rotated copies as in `bench/detection.py`), run by
one `traffic-celery capture` process (`TC_CAPTURE_PROCESSES=1`: the share of one core on a node with a process per
core) against an embedded Redis, with the real enqueue path. The runs: one camera alone (the baseline: no
contention), then N cameras with the `--base` settings (default `TC_CAPTURE_TURNS=false`) and with the `--new`
ones (default: none, the defaults: turns on, `capture.turns`), so the last column is the ratio of the two on the
same machine in the same command.
After `--warmup` seconds each run reads, over `--window` seconds:

- every thread's CPU from `/proc/<pid>/task/<tid>/stat`, named by the Python thread it runs (`capture-<camera>`:
  the camera's loop, `reader-<url>`: its source's reader, the rest: the node's heartbeat, the recorder, ...),
  per analysed frame;
- each camera's frame rate (frames counted by the node, with the node's own clock): the lowest and the mean;
- `py-spy record` (a sampling profiler, `pip install py-spy`; skipped with a line if it is missing): the samples
  of the loop threads by function, inclusive (a function counts in every sample it is on the stack of), turned
  into ms per analysed frame with the loop threads' CPU from `/proc`. py-spy counts a runnable thread waiting for
  the core as busy, so with many threads on one core these shares read as wall time; the one-camera run is CPU.

Prints the tables, then one JSON line last.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.detection import camera_counters, stop_group, video_copies, wait_until_analysing  # noqa: E402
from traffic_celery.embedded_redis import EmbeddedRedis  # noqa: E402
from traffic_celery.registry import CameraConfig, CameraRegistry  # noqa: E402
from traffic_celery.settings import DEMO_KEYS_FILE, Settings  # noqa: E402

ROLES = ("loop", "reader", "other")
TOP = 13  # functions shown


def role(thread_name: str) -> str:
    if thread_name.startswith("capture-"):
        return "loop"
    if thread_name.startswith("reader-"):
        return "reader"
    return "other"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_of(pid: int) -> float:
    """Resident memory of `pid`, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_samples(raw: str) -> tuple[dict[int, str], list[tuple[int, list[str], int]]]:
    """py-spy's raw (collapsed) output: the thread names by native id, and (tid, frames root first, count)."""
    names: dict[int, str] = {}
    samples = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("thread (") or not count.isdigit():
            continue
        head, _, rest = stack.partition(";")
        tid_text, _, name = head[len("thread ("):].partition("): ")
        tid = int(tid_text, 16) if tid_text.startswith("0x") else int(tid_text)
        names[tid] = name
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in rest.split(";") if f]
        samples.append((tid, frames, int(count)))
    return names, samples


def by_function(samples: list[tuple[int, list[str], int]],
                names: dict[int, str]) -> tuple[int, collections.Counter[str]]:
    """The loop threads' samples, and each function's inclusive count (once per sample it is on the stack of)."""
    total, inclusive = 0, collections.Counter[str]()
    for tid, frames, count in samples:
        if role(names.get(tid, "")) != "loop":
            continue
        total += count
        for frame in set(frames):
            if "(threading.py)" not in frame:  # every thread's bootstrap: on every sample, says nothing
                inclusive[frame] += count
    return total, inclusive



def run(n: int, label: str, extra: dict[str, str], copies: list[Path], redis_url: str, args: argparse.Namespace,
        folder: Path) -> dict[str, Any]:
    import redis  # noqa: PLC0415

    r = redis.Redis.from_url(redis_url)
    r.flushall()
    registry = CameraRegistry(r)
    cameras = [f"cam-{i:03d}" for i in range(n)]
    for i, camera_id in enumerate(cameras):
        registry.put(CameraConfig(camera_id=camera_id, url=str(copies[i % len(copies)])))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_")}
    env.update({"TC_REDIS_URL": redis_url, "TC_LLM_KEYS_FILE": str(DEMO_KEYS_FILE), "TC_GATE": args.gate,
                "TC_CAPTURE_PROCESSES": "1",
                "TC_CAPTURE_MAX_CAMERAS": "1000", "TC_FRAME_INTERVAL": "0.5",
                "TC_LOOP_FILES": "true", "TC_FILE_PACE": "realtime", "TC_LOG_LEVEL": "WARNING",
                "TC_DATABASE_URL": f"sqlite:///{folder / 'history.db'}", "TC_METRICS_PORT": "0",
                "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(REPO / ".run" / "ultralytics")})
    env.update(extra)
    log_path = folder / f"capture-{n}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "traffic_celery.capture"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def frames() -> dict[str, tuple[int, float]]:
                return camera_counters(registry, cameras)

            wait_until_analysing(registry, cameras, proc, str(log_path))
            time.sleep(args.warmup)  # warm-up: a fixed time by design
            before, cpu_before, t0 = frames(), thread_cpu(proc.pid), time.monotonic()
            raw = ""
            if shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy"):
                spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
                out = folder / f"spy-{n}.txt"
                subprocess.run([spy, "record", "--pid", str(proc.pid), "--duration", str(int(args.window)),
                                "--rate", str(args.rate), "--format", "raw", "--threads", "--nonblocking",
                                "-o", str(out)], check=False, capture_output=True)
                raw = out.read_text() if out.exists() else ""
            else:
                time.sleep(args.window)  # the measuring window: a fixed time by design
            # the node writes its counters every heartbeat: wait for the next one so the window's frames are in
            time.sleep(args.heartbeat)
            after, cpu_after, t1 = frames(), thread_cpu(proc.pid), time.monotonic()
            rss_mb = rss_of(proc.pid)
        finally:
            stop_group(proc)
    analysed = sum(after[c][0] - before[c][0] for c in cameras)
    fps = [(after[c][0] - before[c][0]) / max(1e-3, after[c][1] - before[c][1]) for c in cameras]
    names, samples = parse_samples(raw)
    per_thread = {tid: cpu_after[tid] - cpu_before.get(tid, 0.0) for tid in cpu_after}
    cpu: dict[str, float] = collections.defaultdict(float)
    for tid, seconds in per_thread.items():
        cpu[role(names.get(tid, ""))] += seconds
    loop_samples, inclusive = by_function(samples, names)
    ms = {k: cpu[k] * 1000 / max(1, analysed) for k in ROLES}
    functions = [(name, count / loop_samples * ms["loop"]) for name, count in inclusive.most_common(TOP * 3)
                 if loop_samples] if loop_samples else []
    return {"cameras": n, "label": label, "settings": extra, "rss_mb": rss_mb, "seconds": t1 - t0, "frames": analysed, "min_fps": min(fps),
            "mean_fps": sum(fps) / n,
            "cores": sum(cpu.values()) / (t1 - t0), "ms_per_frame": ms, "total_ms": sum(ms.values()),
            "profiled": bool(loop_samples), "functions": functions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, default=18, help="cameras in the one capture process (default 18: "
                        "a process's share of 36, near a full core on an AVX-512 VNNI machine)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the one-camera run")
    parser.add_argument("--base", default="TC_CAPTURE_TURNS=false",
                        help="settings of the first N-camera run, NAME=VALUE[,NAME=VALUE]; empty: the defaults")
    parser.add_argument("--new", default="", help="settings of the second N-camera run (default: the defaults)")
    parser.add_argument("--gate", choices=("on", "off"), default="on", help="TC_GATE of the cameras")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after every camera is analysing")
    parser.add_argument("--window", type=float, default=30.0, help="measuring window, seconds")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    parser.add_argument("--heartbeat", type=float, default=Settings().capture_heartbeat + 0.5,
                        help="seconds to wait for the node's counters after the window")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    settings = Settings(llm_keys_file=DEMO_KEYS_FILE)
    if not settings.sample_video.exists():
        raise SystemExit(f"the sample video {settings.sample_video} is missing: run scripts/fetch_sample_video.sh")
    def parse(text: str) -> dict[str, str]:
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        if any(len(pair) != 2 or not pair[0].startswith("TC_") for pair in pairs):
            raise SystemExit(f"--base/--new take TC_NAME=VALUE[,TC_NAME=VALUE], not {text!r}")
        return {name.strip(): value.strip() for name, value in pairs}

    base, new = parse(args.base), parse(args.new)
    plan = [(1, "defaults", {})] if args.baseline else []
    plan += [(args.cameras, args.base or "defaults", base), (args.cameras, args.new or "defaults", new)]
    results = []
    with tempfile.TemporaryDirectory(prefix="tc-profile-") as tmp:
        folder = Path(tmp)
        print("writing rotated copies of the video…", file=sys.stderr)
        copies = video_copies(settings.sample_video, 10, folder)
        server = EmbeddedRedis().start()
        try:
            for n, label, extra in plan:
                print(f"{n} camera(s) in one capture process, {label} ({args.warmup:.0f}s warm-up, "
                      f"{args.window:.0f}s window)…", file=sys.stderr)
                results.append(run(n, label, extra, copies, server.url, args, folder))
                print(f"  min {results[-1]['min_fps']:.2f} fps, {results[-1]['total_ms']:.1f} ms a frame",
                      file=sys.stderr)
        finally:
            server.stop()

    labels = [f"{r['cameras']} cam{'s' if r['cameras'] > 1 else ''}" for r in results]
    for k, r in enumerate(results):
        print(f"run {k + 1}: {labels[k]}, {r['label']}")
    compare = len(results) >= 2 and results[-2]["cameras"] == results[-1]["cameras"] > 1
    print(f"\nOne capture process, gate {args.gate}, {args.window:.0f}s window: CPU ms per analysed frame, fps")
    print(f"{'':<40}" + "".join(f"{f'run {k + 1}, ' + label:>22}" for k, label in enumerate(labels))
          + (f"{'new/base':>10}" if compare else ""))

    def row(label: str, values: list[float | None], digits: int = 2) -> None:
        cells = "".join(f"{v:>22.{digits}f}" if v is not None else f"{'':>22}" for v in values)
        ratio = f"{values[-1] / values[-2]:>10.2f}" if compare and values[-1] and values[-2] else ""
        print(f"{label:<40}{cells}{ratio}")

    for name, label in (("loop", "loop threads (capture-*)"), ("reader", "reader threads (reader-*)"),
                        ("other", "the rest (heartbeat, recorder, ...)")):
        row(label, [r["ms_per_frame"][name] for r in results])
    row("all", [r["total_ms"] for r in results])
    row("min fps of a camera", [r["min_fps"] for r in results])
    row("mean fps", [r["mean_fps"] for r in results])
    row("cores", [r["cores"] for r in results])
    row("resident memory, MB", [r["rss_mb"] for r in results], 0)
    profiled = [r for r in results if r["profiled"]]
    if profiled:
        print(f"\nLoop threads by function (py-spy, inclusive: on-CPU and runnable samples, so with many threads on "
              f"one core the shares read as wall time, not CPU), ms per analysed frame, top {TOP}")
        print(f"{'':<52}" + "".join(f"{f'run {k + 1}, ' + label:>22}" for k, label in enumerate(labels)))
        for name, _value in results[0]["functions"][:TOP]:
            short = name if len(name) <= 50 else "…" + name[-49:]
            print(f"{short:<52}" + "".join(f"{dict(r['functions']).get(name, 0.0):>22.2f}" for r in results))
    else:
        print("\n(no function profile: pip install py-spy)")
    summary = {"gate": args.gate, "runs": [{k: v for k, v in r.items() if k != "functions"}
                                           | {"functions": r["functions"][:TOP]} for r in results]}
    if compare:
        summary["new_over_base"] = {"ms_per_frame": results[-1]["total_ms"] / results[-2]["total_ms"],
                                        "min_fps": results[-1]["min_fps"] / results[-2]["min_fps"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
