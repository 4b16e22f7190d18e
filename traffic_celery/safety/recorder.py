"""The recorder: stores incidents in the SQL history and publishes their events, off the capture loops' threads.

A capture loop must never wait for a database or a video encoder, so it hands each incident change to the one
recorder of its process (a queue and a thread). The recorder, in the order it was given the changes:

1. stores the incident (and its snapshot) in the history (`traffic_celery.history`);
2. for an ended incident, encodes its clip (VP8 WebM, `safety.clips`) and stores it;
3. publishes the `incident` event on the camera's channel (every web process relays it to its viewers) and
   appends it to the incident stream that the notifiers read (`traffic_celery.notify`).

So a client that gets an event can fetch the incident, its snapshot and its clip at once. A database that does
not answer costs the history, not the events: the failure is logged once per outage and the events still go out.
The queue is bounded; when it is full (a stuck database), new changes are dropped and counted, never blocking a
camera.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from traffic_celery import store
from traffic_celery.history.store import History
from traffic_celery.protocol import Incident
from traffic_celery.safety import clips

logger = logging.getLogger(__name__)

QUEUE_BOUND = 1000


@dataclass(frozen=True)
class Job:
    incident: Incident
    snapshot: bytes | None = None
    frames: Sequence[clips.RingFrame] | None = None  # an ended incident's clip to write
    fps: float = 2.0
    publish: bool = True


class Recorder:
    def __init__(self, history: History | None, r: redis.Redis):
        self._history = history
        self._redis = r
        self._queue: queue.Queue[Job | None] = queue.Queue(QUEUE_BOUND)
        self._thread = threading.Thread(target=self._run, name="incident-recorder", daemon=True)
        self._db_failing = False
        self.dropped = 0
        self.recorded = 0
        self._urls: dict[str, dict[str, str]] = {}  # incident id -> its media URLs so far (later changes keep them)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            logger.warning("the incident recorder is %d changes behind (database stuck?); dropped the %s of "
                           "incident %s", QUEUE_BOUND, job.incident.state, job.incident.incidentId)

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is recorded (tests, shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._history is not None:
            self._store(lambda h: h.migrate())  # the schema first (a no-op when it is current)
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._record(job)
            except Exception:
                logger.exception("could not record incident %s", job.incident.incidentId if job else "?")
            finally:
                self._queue.task_done()

    def _record(self, job: Job) -> None:
        incident = job.incident
        urls = self._urls.setdefault(incident.incidentId, {})
        stored = self._store(lambda h: h.save(incident))  # the row first: media belong to it
        snapshot = job.snapshot
        if stored and snapshot is not None and self._store(
                lambda h: h.put_media(incident.incidentId, "snapshot", clips.SNAPSHOT_CONTENT_TYPE, snapshot)):
            urls["snapshotUrl"] = f"/api/incidents/{incident.incidentId}/snapshot"
        if stored and job.frames is not None:
            try:
                clip = clips.write_clip(job.frames, set(incident.trackIds), job.fps)
            except Exception:
                logger.exception("could not write the clip of incident %s", incident.incidentId)
                clip = b""
            if clip and self._store(lambda h: h.put_media(incident.incidentId, "clip", clips.CLIP_CONTENT_TYPE,
                                                          clip)):
                urls["clipUrl"] = f"/api/incidents/{incident.incidentId}/clip"
        incident = incident.model_copy(update=urls)
        if incident.state == "end":
            self._urls.pop(incident.incidentId, None)
        if job.publish:
            try:
                store.publish_incident(self._redis, incident)
            except redis.RedisError as exc:
                logger.warning("could not publish the %s of incident %s: %s", incident.state,
                               incident.incidentId, exc)
        self.recorded += 1

    def _store(self, write: Callable[[History], object]) -> bool:
        if self._history is None:
            return False
        try:
            write(self._history)
        except Exception as exc:  # SQLAlchemy's errors, a full disk
            if not self._db_failing:
                logger.warning("the incident history cannot be written (%s); incidents are still published; "
                               "check TC_DATABASE_URL", exc)
                self._db_failing = True
            return False
        if self._db_failing:
            logger.info("the incident history is written again")
            self._db_failing = False
        return True
