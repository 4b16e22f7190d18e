"""Retention of the incident history: every hour, and once at start, incidents older than
`TC_INCIDENT_RETENTION_DAYS` are deleted with their verdicts, snapshot and clip."""

from __future__ import annotations

import logging
import threading
import time

from traffic_celery.history.store import History

logger = logging.getLogger(__name__)

INTERVAL = 3600.0


class Retention:
    def __init__(self, history: History, days: float, interval: float = INTERVAL):
        self._history, self._days, self._interval = history, days, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="incident-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        removed = self._history.purge(time.time() - self._days * 86400)
        if removed:
            logger.info("deleted %d incidents older than %g days", removed, self._days)
        return removed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # SQLAlchemy's errors: the next round tries again
                logger.warning("could not apply the incident retention (%s); trying again in %.0fs", exc,
                               self._interval)
            self._stop.wait(self._interval)
