"""gunicorn settings for the web tier: `gunicorn -c web/gunicorn_conf.py web.wsgi:app [-w 4]`.

flask-sock holds a thread per WebSocket, so workers are threaded (`gthread`); `TC_WEB_THREADS` sets how many per
worker (each open WebSocket takes one), `TC_WEB_WORKERS` how many processes (or `-w`). The bind address follows
the same rule as `python -m web`: without `TC_API_TOKEN`, loopback only. On exit a worker hands its cameras over.
"""

from __future__ import annotations

from types import FrameType
from typing import Any

from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments
from web.auth import bind_address

_settings = get_settings()
instruments.configure(_settings)  # one metrics folder for the workers this master forks: each /metrics sums all
bind = [f"{bind_address(_settings)}:{_settings.web_port}"]
worker_class = "gthread"
workers = _settings.web_workers  # -w on the command line wins
threads = _settings.web_threads
timeout = 120  # a WebSocket request lives long; gthread workers heartbeat separately
graceful_timeout = 20


def worker_exit(server: Any, worker: Any) -> None:  # gunicorn's Arbiter and Worker (gunicorn is untyped)
    from web.runtime import runtime

    try:
        runtime(worker.wsgi).close()
    except Exception:  # the app may not have been built
        server.log.exception("closing the web runtime failed")


def child_exit(server: Any, worker: Any) -> None:  # gunicorn's Arbiter and Worker (gunicorn is untyped)
    instruments.process_exited(worker.pid)  # its WebSocket clients gauge goes with it


def post_worker_init(worker: Any) -> None:  # gunicorn's Worker (gunicorn is untyped)
    """On SIGTERM, end this worker's WebSocket handlers first: gunicorn waits for running requests, and a
    WebSocket is a request that would otherwise hold the shutdown until `graceful_timeout`."""
    import signal
    import threading

    from web.runtime import runtime

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=runtime(worker.wsgi).hub.stop, daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
