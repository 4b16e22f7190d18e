"""Before/after: the CPU each process of the assessment path spends per assessment, for this checkout and an
older git revision, run alternately in one command (the machine's other load hits both alike).

For each tree: a private Redis, the fake provider (0.2 s), one LLM worker (threads, `--concurrency`), the
`results` worker (threads, 8: the callbacks' worker of revisions that link one, idle in those that do not), and this process dispatching `--groups` jobs at `--rate` per second as a capture
loop does (`store.store_image`, `Dispatcher`). Nothing relays to a browser: this is the Celery path alone, the
part `bench/load.py` shows to cost the most. CPU ms per assessment of each process (user + system of its tree;
the dispatcher's thread alone for the producer), and Redis commands per assessment (Lua's included). The older
revision is taken with `git archive` into a temporary folder; nothing in the checkout changes.

    .venv/bin/python bench/path_ab.py --before HEAD [--rounds 2] [--groups 1500] [--rate 120]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

import psutil
import redis

REPO = Path(__file__).resolve().parent.parent
PARTS = ("worker", "results", "producer", "redis", "provider")


def _fresh_import(tree: Path) -> None:
    """Make `tree` the source of the project's modules in this process."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("traffic_celery", "workers", "web", "bench")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    importlib.invalidate_caches()


def measure(tree: Path, groups: int, rate: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    _fresh_import(tree)
    try:
        import cv2
        import numpy as np

        from bench.common import write_keys_file
        from traffic_celery import store
        from traffic_celery.broker.config import producer_app
        from traffic_celery.embedded_redis import EmbeddedRedis, free_port
        from traffic_celery.llm.dispatch import Dispatcher
        from traffic_celery.llm.keys import KeyPool
        from traffic_celery.llm.router import build_router
        from traffic_celery.settings import Settings

        server = EmbeddedRedis().start()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            r = redis.Redis.from_url(server.url)
            keys = write_keys_file(tmp / "keys.json", {f"k{i}": 100 for i in range(1, 5)}, "sk-ab", 64)
            port = free_port()
            env = {**os.environ, "TC_REDIS_URL": server.url, "TC_LLM_KEYS_FILE": str(keys), "PYTHONPATH": str(tree),
                   "TC_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1", "TC_LOG_LEVEL": "WARNING",
                   "TC_METRICS_DIR": str(tmp / "metrics")}
            env.pop("TC_LLM_API_KEYS", None)
            (tmp / "metrics").mkdir(exist_ok=True)
            logs = {}
            for name, args in (
                    ("provider", ["-m", "traffic_celery.fake_provider", "--port", str(port), "--latency", "0.2"]),
                    ("worker", ["-m", "workers", "-Q", "llm.k1,llm.k2,llm.k3,llm.k4", "--hostname", "ab-w@%h",
                                "--pool", "threads", "--concurrency", str(concurrency)]),
                    ("results", ["-m", "workers", "-Q", "results", "--pool", "threads", "--concurrency", "8",
                                 "--hostname", "ab-r@%h"])):
                logs[name] = tmp / f"{name}.log"
                procs[name] = subprocess.Popen([sys.executable, *args], cwd=tree, env=env, start_new_session=True,
                                               stdout=open(logs[name], "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
            deadline = time.monotonic() + 90
            while sum(1 for _ in r.scan_iter("tc:worker:*")) < 2:  # each worker's presence key: consuming
                if time.monotonic() > deadline:
                    tail = b"".join(logs[n].read_bytes()[-600:] for n in ("worker", "results")).decode(errors="replace")
                    raise SystemExit(f"the workers of {tree} did not start:\n{tail}")
                time.sleep(0.3)
            settings = Settings(redis_url=server.url, llm_keys_file=keys)
            dispatch = Dispatcher(producer_app(settings), build_router(settings, r, KeyPool.from_settings(settings)))
            image = (np.random.default_rng(1).random((90, 120, 3)) * 60
                     + np.linspace(0, 180, 120)[None, :, None]).astype(np.uint8)
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
            features = {"objectCount": 3, "classCounts": {"car": 2, "person": 1}, "minGap": 0.2,
                        "pedestrianVehicleGap": 0.3}

            def job(i: int) -> dict[str, Any]:
                return {"cameraId": f"ab{i % 50}", "groupId": "g1", "groupIndex": 0, "reason": "appeared",
                        "imageKey": store.store_image(r, jpeg, 600), "features": features,
                        "memberTrackIds": [1, 2, 3], "frameTimestamp": time.time()}

            def done() -> int:
                return sum(1 for _ in r.scan_iter("tc:done:*", count=1000))

            for i in range(50):  # warm-up: connections, scripts, queues declared
                dispatch(job(i))
            deadline = time.monotonic() + 60
            while done() < 50:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the warm-up of {tree} did not complete; logs in {tmp}")
                time.sleep(0.2)

            def cpu() -> dict[str, float]:
                out = {}
                for name, proc in procs.items():
                    p = psutil.Process(proc.pid)
                    out[name] = sum(sum(c.cpu_times()[:2]) for c in [p, *p.children(recursive=True)])
                assert server.process is not None
                out["redis"] = sum(psutil.Process(server.process.pid).cpu_times()[:2])
                return out

            calls0 = {k: v["calls"] for k, v in r.info("commandstats").items()}
            before, producer0, started = cpu(), time.thread_time(), time.monotonic()
            for i in range(groups):
                dispatch(job(i))
                time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
            producer = time.thread_time() - producer0
            deadline = time.monotonic() + 120
            while done() < groups + 50 and time.monotonic() < deadline:
                time.sleep(0.2)
            after = cpu()
            calls1 = {k: v["calls"] for k, v in r.info("commandstats").items()}
            result = {name: round(1000 * (after[name] - before[name]) / groups, 2) for name in after}
            result["producer"] = round(1000 * producer / groups, 2)
            result["total"] = round(sum(result[p] for p in PARTS), 2)
            result["redis_commands"] = round(sum(calls1[k] - calls0.get(k, 0) for k in calls1
                                                 if k != "cmdstat_info") / groups, 1)
            result["completed"] = done() - 50
            return result
        finally:
            for proc in procs.values():
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
            server.stop()
    finally:
        sys.path.remove(str(tree))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with (e.g. HEAD, a commit)")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs, alternating")
    parser.add_argument("--groups", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=120.0, help="assessments per second dispatched")
    parser.add_argument("--concurrency", type=int, default=64, help="threads of the LLM worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tc-ab-") as tmp_name:
        tmp = Path(tmp_name)
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        results: dict[str, list[dict[str, Any]]] = {"before": [], "now": []}
        for n in range(args.rounds):
            for label, tree in (("before", old), ("now", REPO)):
                work = tmp / f"{label}-{n}"
                work.mkdir()
                load = os.getloadavg()[0]
                results[label].append(measure(tree, args.groups, args.rate, args.concurrency, work))
                print(f"round {n + 1} {label:6s} (load {load:.1f}): {json.dumps(results[label][-1])}",
                      file=sys.stderr, flush=True)
    averaged = {label: {k: round(mean(r[k] for r in rs), 2) for k in (*PARTS, "total", "redis_commands")}
                for label, rs in results.items()}
    print(f"CPU ms per assessment ({args.groups} at {args.rate:.0f}/s, mean of {args.rounds} alternating rounds)")
    print(f"{'':22s}{'before (' + args.before + ')':>22s}{'now':>12s}{'before / now':>14s}")
    for key in (*PARTS, "total", "redis_commands"):
        b, a = averaged["before"][key], averaged["now"][key]
        name = "Redis commands" if key == "redis_commands" else key
        print(f"{name:22s}{b:>22.2f}{a:>12.2f}{(b / a if a else float('nan')):>14.2f}")
    lost = sum(r["completed"] < args.groups for rs in results.values() for r in rs)
    print(json.dumps({"before": args.before, "rounds": results, "mean": averaged,
                      "ratio_total": round(averaged["before"]["total"] / averaged["now"]["total"], 2),
                      "incomplete_runs": lost}))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
