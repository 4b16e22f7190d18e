"""How close the per-key queues run to the keys' limits, against Celery's own `rate_limit`, in one command.

Four keys (2, 3, 5 and 10 QPS), the fake provider enforcing exactly those limits (sliding one-second windows) with
0.2-0.5 s latency, three worker processes, `--tasks` tasks enqueued at once. Two runs on the same workers:

- ours: `workers.assess.assess_group`, keys picked by the `least_loaded` router, the shared Redis limiter;
- baseline: `bench.naive_task.assess_naive`, keys in turn, Celery's `rate_limit` per worker set to the sum of
  the limits divided by the number of workers (the best a per-worker limit can do), 429 retried on the same key.

Printed: successful calls per second over the sum of the limits (ratio), the 429s the provider counted,
p50/p95 queue wait (enqueue to first call), lost tasks (never completed). With `--json` a JSON object last.

    .venv/bin/python bench/dispatch.py [--tasks 2000] [--json]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

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

LIMITS = {"k2": 2, "k3": 3, "k5": 5, "k10": 10}
WORKERS = 3
CONCURRENCY = 5  # measured best on 2 cores: 4 starves the 10-QPS key of slots, 6 adds contention


class Bench:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.redis = EmbeddedRedis().start()
        self.r = redis.Redis.from_url(self.redis.url)
        keys_file = write_keys_file(tmp / "keys.yaml", LIMITS, "sk-bench", max_in_flight=8)
        self.provider_port = free_port()
        self.env = {**os.environ, "TC_REDIS_URL": self.redis.url, "TC_LLM_KEYS_FILE": str(keys_file),
                    "TC_LLM_BASE_URL": f"http://127.0.0.1:{self.provider_port}/v1", "PYTHONPATH": str(REPO),
                    "TC_LOG_LEVEL": "WARNING"}
        self.env.pop("TC_LLM_API_KEYS", None)
        self.settings = Settings(redis_url=self.redis.url, llm_keys_file=keys_file)
        self.procs: list[subprocess.Popen] = []
        self.provider: subprocess.Popen | None = None
        self.image = b""

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.log", "ab")
        return subprocess.Popen(args, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_provider(self) -> None:
        if self.provider:
            os.killpg(self.provider.pid, signal.SIGTERM)
            self.provider.wait(10)
        self.provider = self.spawn([sys.executable, "-m", "traffic_celery.fake_provider", "--port",
                                    str(self.provider_port), "--latency", "0.2", "--latency-jitter", "0.3",
                                    "--seed", "1"], "provider")
        url = f"http://127.0.0.1:{self.provider_port}/health"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url, timeout=1).ok:
                    return
            except requests.RequestException as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the provider did not start; see {self.tmp}") from exc
            time.sleep(0.1)

    def start_workers(self, concurrency: int) -> None:
        for i in range(WORKERS):
            self.procs.append(self.spawn([sys.executable, "-m", "workers", "--hostname", f"bench{i}@%h",
                                          "--concurrency", str(concurrency), "--include", "bench.naive_task"],
                                         f"worker{i}"))
        # the callbacks' own worker, as in the Procfile (see workers/__main__.py)
        self.procs.append(self.spawn([sys.executable, "-m", "workers", "-Q", names.RESULTS_QUEUE, "--pool",
                                      "threads", "--concurrency", "8", "--hostname", "benchresults@%h"],
                                     "results"))
        app = producer_app(self.settings)
        deadline = time.monotonic() + 90
        while len(app.control.inspect(timeout=1).ping() or {}) < WORKERS + 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not start; see {self.tmp}")
        self.app = app

    def provider_429(self) -> int:
        return requests.get(f"http://127.0.0.1:{self.provider_port}/stats", timeout=5).json()["rateLimited"]

    def run(self, label: str, tasks: int, send: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
        self.r.flushdb()
        self.start_provider()
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(names.EVENTS_PATTERN)
        jobs = []
        for i in range(tasks):
            jobs.append({"cameraId": "bench", "groupId": f"g{i}", "groupIndex": 0, "reason": "appeared",
                         "imageKey": store.store_image(self.r, self.image, 3600),
                         "features": {"objectCount": 2, "classCounts": {"car": 1, "person": 1}, "minGap": 0.5,
                                      "pedestrianVehicleGap": 0.5}, "memberTrackIds": [1, 2],
                         "frameTimestamp": time.time()})
        log(f"{label}: enqueueing {tasks} tasks…")
        started = time.monotonic()  # the clock runs from the first enqueue: workers start at once
        ids = {send(job) for job in jobs}
        done: dict[str, dict[str, Any]] = {}
        last_done = None
        last_progress = time.monotonic()
        while len(done) < tasks and time.monotonic() - last_progress < 60:
            msg = pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "pmessage":
                event = json.loads(msg["data"])
                if event["type"] == "risk_assessment" and event["data"]["taskId"] in ids:
                    done[event["data"]["taskId"]] = event["data"]
                    now = time.monotonic()
                    last_done, last_progress = now, now
                    if len(done) % 250 == 0:
                        log(f"{label}: {len(done)}/{tasks} done, {len(done) / (now - started):.1f}/s")
        pubsub.close()
        per_key = {}
        entries = requests.get(f"http://127.0.0.1:{self.provider_port}/log", timeout=10).json()["requests"]
        for key_id, limit in LIMITS.items():
            ok = [e["t"] for e in entries if e["key"] == key_id and e["status"] == 200]
            span = ok[-1] - ok[0] if len(ok) > 1 else float("nan")
            gaps = sorted((b - a) * limit for a, b in zip(ok, ok[1:], strict=False))  # in units of the key's interval
            per_key[key_id] = {"gap_p50": pct(gaps, 0.5), "gap_p90": pct(gaps, 0.9), "calls": len(ok), "util": (len(ok) - 1) / span / limit if len(ok) > 1 else 0.0,
                               "429": sum(e["key"] == key_id and e["status"] == 429 for e in entries),
                               "end": ok[-1] - entries[0]["t"] if ok else 0.0}
        log(f"{label} per key: " + ", ".join(f"{k}: {v['calls']} calls, {v['util']:.3f} of its limit while busy, "
                                            f"{v['429']} 429s, gap/interval p50 {v['gap_p50']:.3f} p90 {v['gap_p90']:.3f}, last call at {v['end']:.1f}s"
                                            for k, v in per_key.items()))
        elapsed = (last_done or time.monotonic()) - started
        waits = [d["queueWait"] for d in done.values()]
        rate = len(done) / elapsed if elapsed else 0.0
        moves = [d.get("moves", 0) for d in done.values()]
        log(f"{label}: {sum(moves) / max(1, len(moves)):.2f} moves between keys per task on average")
        return {"calls_per_s": rate, "ratio": rate / sum(LIMITS.values()), "provider_429": self.provider_429(),
                "wait_p50_s": pct(waits, 0.5), "wait_p95_s": pct(waits, 0.95), "lost": tasks - len(done),
                "seconds": elapsed}

    def stop(self) -> None:
        for proc in [*self.procs, self.provider]:
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.procs, self.provider]:
            if proc:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="prefork processes per worker")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline (exploring settings)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop every child on the way out
    import cv2  # noqa: PLC0415

    bench = Bench(Path(tempfile.mkdtemp(prefix="tc-dispatch-")))
    try:
        bus = Path(__import__("ultralytics").__file__).parent / "assets" / "bus.jpg"
        bench.image = cv2.imencode(".jpg", cv2.imread(str(bus))[200:600, 0:400])[1].tobytes()
        log(f"starting {WORKERS} workers x {args.concurrency} (logs in {bench.tmp})…")
        bench.start_workers(args.concurrency)
        pool = KeyPool.from_settings(bench.settings)
        ours = Dispatcher(producer_app(bench.settings), build_router(bench.settings, bench.r, pool))
        result_ours = bench.run("ours", args.tasks, ours)

        per_worker = sum(LIMITS.values()) / WORKERS
        bench.app.control.rate_limit("bench.naive_task.assess_naive", f"{per_worker:.3f}/s", reply=True)
        keys = list(pool)
        callback = bench.app.signature("workers.results.on_assessment", queue=names.RESULTS_QUEUE)
        counter = iter(range(10**9))

        def naive(job: dict[str, Any]) -> str:
            key = keys[next(counter) % len(keys)]
            return bench.app.send_task("bench.naive_task.assess_naive", queue=key.queue, link=callback,
                                       args=[{**job, "keyId": key.id, "enqueuedAt": time.time()}]).id

        result_base = bench.run("baseline", args.tasks, naive) if not args.no_baseline else \
            {k: float("nan") if isinstance(v, float) else 0 for k, v in result_ours.items()}
    finally:
        bench.stop()

    rows = [("successful calls / s", "calls_per_s", "{:.2f}"), ("ratio to the sum of limits (20/s)", "ratio", "{:.3f}"),
            ("429s counted by the provider", "provider_429", "{:d}"), ("queue wait p50 (s)", "wait_p50_s", "{:.2f}"),
            ("queue wait p95 (s)", "wait_p95_s", "{:.2f}"), ("lost tasks", "lost", "{:d}"),
            ("wall time (s)", "seconds", "{:.1f}")]
    print(f"{args.tasks} tasks, keys {LIMITS} QPS, {WORKERS} workers x {args.concurrency} (+ the results worker)")
    print(f"{'':36} {'ours':>12} {'Celery rate_limit':>18}")
    for name, field, fmt in rows:
        print(f"{name:36} {fmt.format(result_ours[field]):>12} {fmt.format(result_base[field]):>18}")
    if args.json:
        print(json.dumps({**result_ours, "baseline_ratio": result_base["ratio"],
                          "baseline_429": result_base["provider_429"], "baseline_lost": result_base["lost"],
                          "baseline_wait_p95_s": result_base["wait_p95_s"]}))


if __name__ == "__main__":
    main()
