"""The reports of the incident history (`traffic_celery.history.reports`) on a month of busy cameras, with the
history's indexes, with those of migration 0001 (before the reports' covering index) and, as the baseline in the same
command, with the indexes the reports use dropped.

A SQLite file is filled with `--days` (30) of `--cameras` (20) cameras, `--incidents` (100 000) in all, spread the
way traffic is: busier cameras (weights 1/rank^0.7), rush hours (peaks at 8:00 and 17:30 over a daytime
plateau, a quiet night), 70% medium / 22% high / 8% low, 0-2 zones of the camera's three, two classes, worst
metrics (TTC, PET, minimum distance) and a conflict point around two or three hot spots of the camera, 0-2 verdicts,
and one snapshot per camera per day. Every report is then timed (the median of `--repeat` runs after one warm-up):

- the chart of the page (counts per bucket and severity only, `rows=False`) of every camera over 24 h and 30 days;
- counts with their table of rows of every camera over the last 24 h (15-minute buckets) and over the 30 days
  (60 minutes), of the busiest camera over the 30 days;
- the ranking over 24 h and 30 days;
- the busiest camera's heat map over 24 h and 30 days (PNG included);
- the incidents CSV of every camera over 24 h and of the busiest camera over 30 days (every row read).

The same runs go to two copies of the file: one with the indexes of revision 0001 (`ix_incidents_started_at` on
started_at alone instead of the covering `ix_incidents_started_at_covering`), one with the indexes the reports use
(:data:`REPORT_INDEXES`) dropped: the baseline. Statistics are refreshed (ANALYZE) after each change, and the three
are timed in turn (interleaved), so the other load of a shared machine falls on each alike. The table shows the three and the ratios
(0001 / head and baseline / head: how many times faster the head's indexes make it); the last line is JSON.

    .venv/bin/python bench/reports.py [--days 30] [--cameras 20] [--incidents 100000] [--repeat 5] [--keep PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import log  # noqa: E402
from traffic_celery.history import History  # noqa: E402
from traffic_celery.history.reports import Reports  # noqa: E402
from traffic_celery.history.store import INCIDENTS, MEDIA, VERDICTS, ZONES  # noqa: E402

# the indexes the reports' queries use (models.py), dropped for the baseline
REPORT_INDEXES = ("ix_incidents_camera_id_started_at", "ix_incidents_started_at_covering", "ix_verdicts_incident_id")
# the schema of revision 0001 from the head's: migration 0002's downgrade
TO_0001 = ("CREATE INDEX ix_incidents_started_at ON incidents (started_at)",
           "DROP INDEX ix_incidents_started_at_covering")
BASELINE_FROM_0001 = ("DROP INDEX ix_incidents_started_at", "DROP INDEX ix_incidents_camera_id_started_at",
                      "DROP INDEX ix_verdicts_incident_id")
DAY = 86400
SEVERITIES = (("medium", 2, 0.70), ("high", 3, 0.22), ("low", 1, 0.08))
CONFLICTS = (("vehicle-pedestrian", ["car", "person"], 0.50), ("vehicle-vehicle", ["car", "truck"], 0.35),
             ("vehicle-cyclist", ["bicycle", "car"], 0.15))
ZONES_OF_A_CAMERA = ("crossing", "junction", "bus stop")


def hour_profile() -> np.ndarray:
    """Relative incident rate per minute of the day: a quiet night, a daytime plateau, rush hours at 8:00 and 17:30."""
    minutes = np.arange(1440) / 60.0
    rate = 0.15 + 0.6 * ((minutes > 6.5) & (minutes < 21.5))
    rate += 1.6 * np.exp(-0.5 * ((minutes - 8.0) / 0.9) ** 2) + 1.9 * np.exp(-0.5 * ((minutes - 17.5) / 1.1) ** 2)
    return rate / rate.sum()


def fill(history: History, days: int, cameras: int, total: int, end: float, seed: int = 7) -> dict[str, Any]:
    """Write the incidents, zones, verdicts and snapshots straight into the tables (bulk inserts: History.save one by
    one would take minutes and measure the writes, not the reports)."""
    rng = np.random.default_rng(seed)
    start = end - days * DAY
    weights = 1 / np.arange(1, cameras + 1) ** 0.7
    per_camera = rng.multinomial(total, weights / weights.sum())
    profile = hour_profile()
    severity_p = [p for *_, p in SEVERITIES]
    conflict_p = [p for *_, p in CONFLICTS]
    frame = np.full((720, 1280, 3), (70, 80, 75), np.uint8)
    cv2.rectangle(frame, (0, 400), (1280, 720), (60, 60, 60), -1)
    snapshot = cv2.imencode(".jpg", frame)[1].tobytes()
    incidents: list[dict[str, Any]] = []
    zones: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    for c in range(cameras):
        camera = f"cam-{c:02d}"
        n = int(per_camera[c])
        day = rng.integers(0, days, n)
        minute = rng.choice(1440, n, p=profile)
        started = start + day * DAY + minute * 60 + rng.uniform(0, 60, n)
        hot = rng.uniform((100, 100), (1180, 620), (int(rng.integers(2, 4)), 2))
        spot = rng.integers(0, len(hot), n)
        points = np.clip(hot[spot] + rng.normal(0, 40, (n, 2)), 0, [1279, 719])
        severity = rng.choice(len(SEVERITIES), n, p=severity_p)
        conflict = rng.choice(len(CONFLICTS), n, p=conflict_p)
        zone_count = rng.choice(3, n, p=[0.2, 0.65, 0.15])
        verdict_count = rng.choice(3, n, p=[0.4, 0.4, 0.2])
        ttc = rng.lognormal(0.1, 0.4, n)
        pet = rng.lognormal(-0.2, 0.5, n)
        snapped: set[int] = set()
        for i in range(n):
            incident_id = f"{camera}-{i:06d}"
            sev, rank, _ = SEVERITIES[severity[i]]
            kind, classes, _ = CONFLICTS[conflict[i]]
            t = float(started[i])
            incidents.append({
                "id": incident_id, "camera_id": camera, "state": "end", "severity": sev, "severity_rank": rank,
                "opened_by": "near_miss", "group_id": f"g{i % 50}", "conflict_type": kind, "started_at": t,
                "updated_at": t + 4, "ended_at": t + 6, "classes": classes, "track_ids": [i * 2, i * 2 + 1],
                "metrics": {"conflictType": kind, "trackIds": [i * 2, i * 2 + 1], "classes": classes,
                            "ttc": round(float(ttc[i]), 3), "pet": round(float(pet[i]), 3), "distance": 4.0,
                            "minDistance": round(float(ttc[i]) * 2, 3), "relativeSpeed": 6.0, "speeds": {},
                            "units": "metric", "severity": sev,
                            "point": [round(float(points[i, 0]), 1), round(float(points[i, 1]), 1)]}})
            for z in rng.choice(len(ZONES_OF_A_CAMERA), int(zone_count[i]), replace=False):
                zones.append({"incident_id": incident_id, "zone": ZONES_OF_A_CAMERA[int(z)]})
            for v in range(int(verdict_count[i])):
                verdicts.append({"task_id": f"{incident_id}-t{v}", "incident_id": incident_id, "risk_level": sev,
                                 "risk_types": ["pedestrian-conflict"], "description": "a car close to a person",
                                 "confidence": 0.8, "llm_model": "fake-vision", "api_key_id": "key-1", "at": t + v})
            if int(day[i]) not in snapped:  # the first incident of each day of the camera has its snapshot
                snapped.add(int(day[i]))
                media.append({"incident_id": incident_id, "kind": "snapshot", "content_type": "image/jpeg",
                              "data": snapshot})
    with history.engine.begin() as connection:
        for table, rows in ((INCIDENTS, incidents), (ZONES, zones), (VERDICTS, verdicts), (MEDIA, media)):
            for k in range(0, len(rows), 5000):
                connection.execute(table.insert(), rows[k:k + 5000])
        connection.exec_driver_sql("ANALYZE")
    return {"incidents": len(incidents), "zones": len(zones), "verdicts": len(verdicts), "snapshots": len(media),
            "busiest": "cam-00", "busiest_incidents": int(per_camera[0])}


def time_interleaved(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median ms of each run, the runs interleaved (a, b, c, a, b, c, ...) after one warm-up each (the page cache and
    SQLite's own), so that the other load of a shared machine falls on every configuration alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def queries(reports: Reports, end: float, days: int, busiest: str) -> dict[str, Callable[[], object]]:
    day, month = (end - DAY, end), (end - days * DAY, end)
    return {
        "chart 24h all 15min": lambda: reports.counts(*day, 15, rows=False),
        "chart 30d all 60min": lambda: reports.counts(*month, 60, rows=False),
        "counts 24h all 15min": lambda: reports.counts(*day, 15),
        "counts 30d all 60min": lambda: reports.counts(*month, 60),
        "counts 30d busiest 60min": lambda: reports.counts(*month, 60, camera_id=busiest),
        "ranking 24h": lambda: reports.ranking(*day),
        "ranking 30d": lambda: reports.ranking(*month),
        "heatmap 24h busiest": lambda: reports.heatmap(busiest, *day),
        "heatmap 30d busiest": lambda: reports.heatmap(busiest, *month),
        "csv 24h all": lambda: sum(1 for _ in reports.incident_rows(*day)),
        "csv 30d busiest": lambda: sum(1 for _ in reports.incident_rows(*month, camera_id=busiest)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--cameras", type=int, default=20)
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the SQLite file here (and keep it) instead of a temp dir")
    args = parser.parse_args()

    folder = tempfile.TemporaryDirectory(prefix="tc-bench-reports-")
    path = args.keep or Path(folder.name) / "history.db"
    if path.exists():
        sys.exit(f"{path} exists: pass a new file to --keep")
    history = History(f"sqlite:///{path}")
    histories = {"head": history}
    try:
        history.migrate()
        end = float(math.floor(time.time() / 60) * 60)
        t0 = time.perf_counter()
        filled = fill(history, args.days, args.cameras, args.incidents, end)
        log(f"filled {path} in {time.perf_counter() - t0:.1f} s: {filled}")
        # a copy of the file per configuration (SQLite's backup API), so the runs can be interleaved
        for config, changes in (("0001", TO_0001), ("none", TO_0001 + BASELINE_FROM_0001)):
            copy = path.with_name(f"{path.stem}-{config}.db")
            with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
                source.backup(target)
            histories[config] = History(f"sqlite:///{copy}")
            with histories[config].engine.begin() as connection:
                for statement in changes:
                    connection.execute(text(statement))
                connection.exec_driver_sql("ANALYZE")
        runs = {config: queries(Reports(h), end, args.days, filled["busiest"]) for config, h in histories.items()}
        sizes = {"csv 24h all": runs["head"]["csv 24h all"](), "csv 30d busiest": runs["head"]["csv 30d busiest"]()}
        results: dict[str, dict[str, float]] = {config: {} for config in histories}
        for name in runs["head"]:
            timed = time_interleaved({config: runs[config][name] for config in histories}, args.repeat)
            for config, ms in timed.items():
                results[config][name] = ms
            log(f"{name}: " + ", ".join(f"{config} {ms:.1f} ms" for config, ms in timed.items()))
    finally:
        for h in histories.values():
            h.close()
        if args.keep is None:
            folder.cleanup()

    print(f"{filled['incidents']} incidents, {args.cameras} cameras, {args.days} days (busiest: "
          f"{filled['busiest_incidents']}), SQLite; median of {args.repeat} interleaved runs, ms")
    head, old, none = results["head"], results["0001"], results["none"]
    print(f"{'report':28} {'head':>9} {'0001':>9} {'no index':>9} {'0001/head':>10} {'none/head':>10}")
    vs_0001, vs_none = {}, {}
    for name in head:
        vs_0001[name] = old[name] / head[name] if head[name] > 0 else float("nan")
        vs_none[name] = none[name] / head[name] if head[name] > 0 else float("nan")
        print(f"{name:28} {head[name]:9.1f} {old[name]:9.1f} {none[name]:9.1f} {vs_0001[name]:9.2f}x "
              f"{vs_none[name]:9.2f}x")
    print(f"rows: csv 24h all {sizes['csv 24h all']}, csv 30d busiest {sizes['csv 30d busiest']}")
    print(json.dumps({"bench": "reports", **{k: v for k, v in filled.items()}, "days": args.days,
                      "cameras": args.cameras, "repeat": args.repeat, "dropped": list(REPORT_INDEXES),
                      "head_ms": {k: round(v, 2) for k, v in head.items()},
                      "rev0001_ms": {k: round(v, 2) for k, v in old.items()},
                      "baseline_ms": {k: round(v, 2) for k, v in none.items()},
                      "ratio_0001": {k: round(v, 2) for k, v in vs_0001.items()},
                      "ratio_baseline": {k: round(v, 2) for k, v in vs_none.items()}}))


if __name__ == "__main__":
    main()
