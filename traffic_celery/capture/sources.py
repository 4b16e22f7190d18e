"""Video sources: open a camera with OpenCV, keep its newest frame, and reconnect when the stream is lost.

Supported URLs: `rtsp://` (transport from `TC_RTSP_TRANSPORT`, TCP by default), `http(s)://` (MJPEG or any stream
FFmpeg reads), a file path or `file://` URL (played once or looped, at real-time pace or as fast as the consumer
takes frames) and a webcam index (`0`). Open and read timeouts go to OpenCV's FFmpeg backend
(`CAP_PROP_OPEN_TIMEOUT_MSEC`, `CAP_PROP_READ_TIMEOUT_MSEC`), so a stalled stream fails instead of hanging.
OpenCV opens one FFmpeg source at a time per process (measured: a second open waits for a first one that hangs),
so a camera that hangs while opening delays the other cameras' reconnects in the same process by up to
`TC_SOURCE_OPEN_TIMEOUT`; reads are not serialised.

:class:`FrameSource` owns a reader thread. It reports its state through a callback:

- `online`: frames are arriving;
- `reconnecting`: the stream was lost (or cannot be opened right now); retries follow an exponential backoff with
  jitter, `TC_RECONNECT_INITIAL` doubling up to `TC_RECONNECT_MAX`;
- `offline`: the backoff reached its cap (it keeps retrying at the cap), or the source is over for good: a file
  that ended without looping, or a source that never opened (a wrong URL is reported, not retried forever,
  unless the camera is known to have worked before: `retry_unopened`).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from traffic_celery.protocol import CameraState
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

ONLINE, RECONNECTING, OFFLINE = CameraState.ONLINE, CameraState.RECONNECTING, CameraState.OFFLINE
StateCallback = Callable[[CameraState, str], None]  # (state, message)


class SourceError(RuntimeError):
    """The camera cannot be opened or read; the message says which URL and what to check."""


def is_file_source(url: str) -> bool:
    parsed = urlparse(url)
    return not url.isdigit() and (parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and url[1:3] == ":\\"))


NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
MAX_URL_LENGTH = 2048
MAX_WEBCAM_INDEX = 63


class UrlRefused(ValueError):
    """A camera URL that is not opened at all; the message says why and what is accepted."""


def check_url(url: str, media_dir: Path) -> str:
    """The camera URL to store, if a camera may be opened from it; :class:`UrlRefused` otherwise.

    Accepted: `rtsp(s)://` and `http(s)://` URLs with a host, a webcam index (`0`-`63`), and local files inside
    `media_dir` (`TC_MEDIA_DIR`), stored resolved (symlinks followed), however the path is written: absolute,
    relative to the media folder, or relative to this process's current working directory (`.media/vtest.avi`
    typed from the repository root), plain or as a `file://` URL. Anything else (other schemes such as `ftp:` or
    `data:`, options smuggled in as FFmpeg protocols, files elsewhere on the machine, `../` escapes, symlinks
    in the media folder that resolve outside it) is refused, so the camera API cannot read arbitrary files or
    reach arbitrary protocols.

    A relative path has two readings: relative to the media folder (first) and relative to the working directory
    (second). Precedence: among the readings that exist (or all of them, if none exists), the first that
    resolves inside the media folder is stored; if none does, the URL is refused. So a name that exists in the
    media folder always means that file, wherever the process runs; `.media/vtest.avi` from the repository root
    means `<repo>/.media/vtest.avi` (it exists) rather than `.media/.media/vtest.avi` (it does not); a path that
    exists only outside the media folder (say through a symlink) is refused rather than read as a missing file
    in it; and a path that exists nowhere is stored as the media-folder reading and fails when the camera opens
    it, with "does not exist".
    """
    url = url.strip()
    accepted = (f"use rtsp://, rtsps://, http(s)://, a webcam index 0-{MAX_WEBCAM_INDEX}, or a file in "
                f"{media_dir} (TC_MEDIA_DIR)")
    if not url:
        raise UrlRefused(f"the camera URL is empty; {accepted}")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the camera URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise UrlRefused("the camera URL contains control characters")
    if url.isdigit():
        if int(url) > MAX_WEBCAM_INDEX:
            raise UrlRefused(f"webcam index {url} is out of range; {accepted}")
        return url
    parsed = urlparse(url)
    if parsed.scheme.lower() in NETWORK_SCHEMES:
        if not parsed.hostname:
            raise UrlRefused(f"the camera URL {url!r} has no host; {accepted}")
        return url
    if not is_file_source(url):
        raise UrlRefused(f"unsupported camera URL scheme {parsed.scheme!r}; {accepted}")
    raw = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser()
    media = media_dir.resolve()
    readings = [media / raw] if raw.is_absolute() else [media / raw, *_cwd_reading(raw)]
    resolved = [path for path in map(_resolved, readings) if path is not None]
    existing = [path for path in resolved if _exists(path)]
    chosen = next((path for path in existing or resolved if path.is_relative_to(media)), None)
    if chosen is None:
        raise UrlRefused(f"the file {url} is outside the media folder {media}: copy it there or set TC_MEDIA_DIR")
    return str(chosen)


def _resolved(path: Path) -> Path | None:
    """`path` with its symlinks followed; None for a symlink loop (refused like a file outside the media)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # not allowed to look: as good as missing
        return False


def _cwd_reading(raw: Path) -> list[Path]:
    """`raw` relative to the current working directory, if there is one (it may have been removed)."""
    try:
        return [Path.cwd() / raw]
    except OSError:
        return []


def configure_ffmpeg(rtsp_transport: str) -> None:
    """OpenCV reads FFmpeg demuxer options from this variable at every open (it is the only way to pass them)."""
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{rtsp_transport}"
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


@dataclass(frozen=True)
class SourceOptions:
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    loop_files: bool = True
    pace: str = "realtime"  # or "fast": a file is read as fast as frames are taken, none skipped
    reconnect_initial: float = 1.0
    reconnect_max: float = 30.0
    retry_unopened: bool = False  # retry a source that has never opened (a camera that worked before)
    decode_all: bool = False  # convert every frame read; False: only those a consumer asks for (grab/retrieve)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> SourceOptions:
        values: dict[str, object] = dict(
            open_timeout=settings.source_open_timeout, read_timeout=settings.source_read_timeout,
            loop_files=settings.loop_files, pace=settings.file_pace,
            reconnect_initial=settings.reconnect_initial, reconnect_max=settings.reconnect_max)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]  # overrides are checked by the dataclass's fields


def open_capture(url: str, options: SourceOptions = SourceOptions()) -> cv2.VideoCapture:
    """Open a file, an rtsp/http(s) URL or a webcam index with OpenCV; raise SourceError if it does not open."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.read_timeout * 1000)]
    if url.isdigit():
        cap = cv2.VideoCapture(int(url), cv2.CAP_ANY, params)
    else:
        target = urlparse(url).path if url.startswith("file://") else url
        if is_file_source(url) and not Path(target).is_file():
            raise SourceError(f"camera source {url!r} does not exist; give an existing file, an rtsp:// or "
                              f"http(s):// URL, or a webcam index")
        cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open camera source {url!r} within {options.open_timeout:g}s; check the URL, "
                          f"the network and the credentials")
    return cap


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """Open the source and read one frame, within `timeout` seconds whatever the backend does."""
    outcome: list[tuple[bool, str]] = []

    def run() -> None:
        try:
            cap = open_capture(url, SourceOptions(open_timeout=timeout, read_timeout=timeout))
            try:
                ok, frame = cap.read()
            finally:
                cap.release()
            outcome.append((True, f"reachable: {frame.shape[1]}x{frame.shape[0]}") if ok and frame is not None
                           else (False, f"camera source {url!r} opened but sent no frame; check the stream"))
        except SourceError as exc:
            outcome.append((False, str(exc)))

    thread = threading.Thread(target=run, name="probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else (False, f"camera source {url!r} did not answer within {timeout:g}s")


def backoff_delay(attempt: int, initial: float, cap: float) -> tuple[float, bool]:
    """Delay before retry number `attempt` (1, 2, ...): `initial` doubling, capped, times a jitter in [0.5, 1];
    and whether the cap is reached."""
    raw = initial * 2 ** min(attempt - 1, 30)
    return min(raw, cap) * random.uniform(0.5, 1.0), raw >= cap


class FrameSource:
    """A reader thread that keeps the newest frame of a capture and reconnects when the stream is lost.

    `newest()` gives the consumer the newest frame; with a file at `pace="fast"` the reader waits for the
    consumer instead, so every frame is taken once. The thread ends on `stop()` or when the source is over for
    good (`ended` says why).

    Otherwise the reader `grab()`s every frame (a live stream must be drained, a file keeps its pace) and
    `retrieve()`s (converts to BGR) only the first frame grabbed after a consumer asked: a camera sampled at 2 fps
    from a 10 fps source converts one frame in five. Measured on the sample video (MPEG-4, 768x576, `bench/
    detection.py`): `read()` 0.55 ms a frame, `grab()` 0.29 ms, so 1 ms saved per analysed frame, about 4% of what a
    gated camera costs. The consumer waits for that frame at most one frame period (`SourceOptions.decode_all`
    converts every frame)."""

    def __init__(self, url: str, options: SourceOptions = SourceOptions(),
                 on_state: StateCallback | None = None, on_reconnect: Callable[[], None] | None = None):
        self.url = url
        self.options = options
        self._file = is_file_source(url)
        self.fast = self._file and options.pace == "fast"  # every frame handed over, none skipped
        self._on_state = on_state or (lambda state, message: None)
        self._on_reconnect = on_reconnect or (lambda: None)
        self._frame: np.ndarray | None = None
        self._seq = 0  # frames read so far (the newest frame's number)
        self._frame_seq = 0  # the number of the frame in `_frame`
        self._lazy = not self.fast and not options.decode_all
        self._requests = 0  # lazy: frames asked for by the consumer, and served
        self._served = 0
        self._taken = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._finished = False
        self.ended: str | None = None  # why the source is over for good; None while it may still deliver
        self.frames_read = 0
        self.frames_converted = 0  # frames retrieved (converted to BGR); lazy: only those a consumer asked for
        self.reconnects = 0
        self._position = 0.0  # seconds into a file's timeline (growing across loops), of the newest frame
        self._loop_offset = 0.0
        self._taken_position = 0.0
        self._thread = threading.Thread(target=self._run, name=f"reader-{url[:40]}", daemon=True)

    def start(self) -> FrameSource:
        self._thread.start()
        return self

    def _set_state(self, state: CameraState, message: str) -> None:
        try:
            self._on_state(state, message)
        except Exception:  # reporting must never kill the reader
            logger.exception("state callback failed for %s", self.url)

    def _run(self) -> None:
        attempt, opened_once = 0, False
        try:
            while not self._stop.is_set():
                try:
                    cap = open_capture(self.url, self.options)
                except SourceError as exc:
                    if not opened_once and not self.options.retry_unopened:
                        self._finish(str(exc))
                        return
                    reason: str | None = str(exc)
                else:
                    opened_once, attempt = True, 0
                    self._set_state(ONLINE, f"streaming {self.url}")
                    try:
                        reason = self._read_all(cap)
                    finally:
                        cap.release()
                    if reason is None or self._stop.is_set():
                        return
                    if self._file and not self.options.loop_files:
                        self._finish(f"end of file {self.url}")
                        return
                attempt += 1
                self.reconnects += 1
                self._on_reconnect()
                delay, capped = backoff_delay(attempt, self.options.reconnect_initial, self.options.reconnect_max)
                self._set_state(OFFLINE if capped else RECONNECTING,
                                f"{reason}; reconnect attempt {attempt} in {delay:.1f}s")
                logger.info("%s: %s; retry %d in %.1fs", self.url, reason, attempt, delay)
                self._stop.wait(delay)
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _finish(self, reason: str) -> None:
        self.ended = reason
        self._set_state(OFFLINE, reason)

    def _read_all(self, cap: cv2.VideoCapture) -> str | None:
        """Read until stopped (None) or until the stream fails (the reason). A looped file rewinds."""
        fps = cap.get(cv2.CAP_PROP_FPS)
        frame_time = 1.0 / fps if self._file and 0 < fps < 240 else 0.0  # a file's own seconds per frame
        pace = frame_time if self.options.pace == "realtime" else 0.0
        next_at = time.monotonic()
        frames_this_open = 0
        while not self._stop.is_set():
            if self._lazy:
                ok, frame, asked = self._grab(cap)
            else:
                ok, frame = cap.read()
                asked = self._requests
            if not ok or (frame is None and not self._lazy):
                if self._file and self.options.loop_files and frames_this_open:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    frames_this_open = 0
                    self._loop_offset = self._position + frame_time
                    continue
                return "end of file" if self._file else f"stream lost (no frame within " \
                    f"{self.options.read_timeout:g}s or the connection closed)"
            frames_this_open += 1
            self.frames_read += 1
            self.frames_converted += frame is not None
            with self._cond:
                if self.fast:
                    self._cond.wait_for(lambda: self._taken >= self._seq or self._stop.is_set())
                self._seq += 1
                if frame is not None:
                    self._frame, self._frame_seq, self._served = frame, self._seq, asked
                if self._file:
                    self._position = self._loop_offset + max(0.0, cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
                self._cond.notify_all()
            if pace:
                next_at = max(next_at + pace, time.monotonic() - 1.0)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        return None

    def _grab(self, cap: cv2.VideoCapture) -> tuple[bool, np.ndarray | None, int]:
        """Grab the next frame, and convert it only if a consumer asked for one: (ok, frame or None, requests
        served by it)."""
        if not cap.grab():
            return False, None, 0
        with self._cond:
            asked = self._requests
        if asked <= self._served:
            return True, None, asked
        ok, frame = cap.retrieve()
        return bool(ok and frame is not None), frame if ok else None, asked

    @property
    def position(self) -> float:
        """Where the frame last taken by `newest()` is in a file's own timeline, seconds (grows across loops)."""
        with self._cond:
            return self._taken_position

    def newest(self, after_seq: int, timeout: float) -> tuple[np.ndarray | None, int]:
        """The newest frame if it is newer than `after_seq`, waiting up to `timeout`; (None, seq) otherwise."""
        with self._cond:
            if self._lazy:  # ask for a frame: the reader converts the next one it grabs
                self._requests += 1
                request = self._requests
                self._cond.wait_for(lambda: self._served >= request or self._finished, timeout)
                if self._served >= request and self._frame_seq > after_seq:
                    self._taken_position = self._position
                    return self._frame, self._frame_seq
                return None, self._frame_seq
            self._cond.wait_for(lambda: self._seq > after_seq or self._finished, timeout)
            if self._seq > after_seq:
                self._taken, self._taken_position = self._seq, self._position
                self._cond.notify_all()
                return self._frame, self._seq
            return None, self._seq

    @property
    def alive(self) -> bool:
        return not self._finished

    def request_stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        self.request_stop()
        self._thread.join(timeout=self.options.read_timeout + 5)
