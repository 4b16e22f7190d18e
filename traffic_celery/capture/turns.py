"""Turns: the capture loops of one process analyse one frame at a time, the most overdue camera first.

A capture process is one core: its detector runs on one thread (`traffic-celery capture` runs a process per
core). With every camera's loop thread analysing as soon as its frame is due, a process with twenty cameras has
twenty analyses in flight on that core: their detector calls interleave (the detector's lock is taken per crop),
and every GIL hand-over costs a thread coming back from a C call (numpy, OpenCV, the detector, a Redis reply) up
to a switch interval, so a frame takes many times its CPU in wall time. Near a full core, cameras then miss their
cadence while the core still has time left, and not alike: the thread that loses the detector lock more often
falls behind. :class:`Turns` gives the analysis to one loop at a time, from its first detector call to its last
publish, in the order the frames were due (the earliest due time first, ties in arrival order), so a camera that
fell behind is served first and the cameras of a process share a slowdown evenly. Reading frames (the sources'
reader threads) and waiting for the next frame stay outside the turn; the frame's time is taken when it is read,
not when its turn comes.

A turn is held for one frame's analysis, tens of milliseconds, including the analysis's Redis and broker calls:
a Redis or broker that stops answering holds the turn, and so every camera of the process, until the call gives
up (`TC_REDIS_TIMEOUT` per attempt on Redis and, for the capture side's task producer, on a Redis broker). Frames
that could not be published are dropped, as without turns. The capture node gives its loops one :class:`Turns`;
a loop made without one gets its own, which never waits (`TC_CAPTURE_TURNS=false` gives each loop its own too:
the threads analyse whenever their frames are due).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterator


class Turns:
    """A lock handed over in order of due time (earliest first), then of arrival."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._queue: list[tuple[float, int, threading.Event]] = []  # heap of (due, arrival, wake-up)
        self._arrivals = itertools.count()
        self.served = 0  # turns given
        self.waited = 0  # turns that had to wait for another

    @property
    def waiting(self) -> int:
        """Loops waiting for their turn now."""
        with self._lock:
            return len(self._queue)

    @contextlib.contextmanager
    def turn(self, due: float) -> Iterator[None]:
        """Hold the turn for the block; `due` is when the frame was due (time.monotonic()), the order of service."""
        with self._lock:
            wake: threading.Event | None = None
            if self._busy:
                wake = threading.Event()
                heapq.heappush(self._queue, (due, next(self._arrivals), wake))
                self.waited += 1
            else:
                self._busy = True
            self.served += 1
        if wake is not None:
            try:
                wake.wait()  # the holder hands the turn over: _busy stays set for us
            except BaseException:  # interrupted while queued: leave the queue, or pass on a turn handed over
                with self._lock:
                    if not wake.is_set():
                        self._queue = [entry for entry in self._queue if entry[2] is not wake]
                        heapq.heapify(self._queue)
                        raise
                self._hand_over()
                raise
        try:
            yield
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            if self._queue:
                heapq.heappop(self._queue)[2].set()
            else:
                self._busy = False
