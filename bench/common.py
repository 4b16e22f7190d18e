"""What the benchmarks share: progress lines on stderr, percentiles, and a key file for a private key pool."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the table and, with --json, the JSON)."""
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; NaN when there are none."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def write_keys_file(path: Path, qps: dict[str, float], secret_prefix: str, max_in_flight: int) -> Path:
    """A `TC_LLM_KEYS_FILE` with one fake key per id in `qps` (that QPS, no practical RPM limit)."""
    path.write_text(json.dumps({"keys": [
        {"id": k, "secret": f"{secret_prefix}-{k}-0000000000", "qps": q, "rpm": 100_000,
         "max_in_flight": max_in_flight} for k, q in qps.items()]}))
    return path
