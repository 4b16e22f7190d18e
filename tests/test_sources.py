"""Video sources in-process against real files and a real HTTP MJPEG server: frames, end of file, reconnects
with backoff, probes with a timeout."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from traffic_celery.capture.sources import (
    OFFLINE,
    ONLINE,
    RECONNECTING,
    FrameSource,
    SourceOptions,
    UrlRefused,
    backoff_delay,
    check_url,
    probe,
)

from .conftest import wait_for
from .mjpeg_server import MjpegServer, StalledServer


@pytest.fixture()
def numbered_video(tmp_path) -> Path:
    """20 frames whose brightness is 10 x their number, so a reader can tell which frames it got."""
    path = tmp_path / "numbered.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    return path


class States:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, state: str, message: str) -> None:
        self.seen.append((state, message))

    def has(self, state: str, text: str = "") -> bool:
        return any(s == state and text in m for s, m in self.seen)


def test_fast_file_gives_every_frame_once_then_ends(numbered_video):
    states = States()
    source = FrameSource(str(numbered_video), SourceOptions(loop_files=False, pace="fast"), states).start()
    got, seq = [], 0
    while True:
        frame, seq = source.newest(seq, timeout=5)
        if frame is None:
            break
        got.append(round(float(frame.mean()) / 10))
    assert got == list(range(20))  # none skipped, none twice, in order
    assert source.ended == f"end of file {numbered_video}"
    assert states.seen[0][0] == ONLINE and states.seen[-1] == (OFFLINE, f"end of file {numbered_video}")


def test_realtime_file_keeps_only_the_newest_frame(numbered_video):
    source = FrameSource(str(numbered_video), SourceOptions(loop_files=True, pace="realtime")).start()
    try:
        first, seq = source.newest(0, timeout=5)
        assert first is not None
        wait_for(lambda: source.frames_read >= seq + 5, 10, "the reader to go on at the file's pace")
        frame, newer = source.newest(seq, timeout=5)
        assert newer - seq >= 4  # frames read while nobody asked were replaced, not queued
        wait_for(lambda: source.frames_read > 25, 10, "the file to loop")
        assert source.ended is None and source.alive
    finally:
        source.stop()


def test_missing_file_is_a_clear_final_error(tmp_path):
    states = States()
    source = FrameSource(str(tmp_path / "nope.avi"), SourceOptions(), states).start()
    frame, _ = source.newest(0, timeout=5)
    assert frame is None and not source.alive
    assert "does not exist" in source.ended and source.reconnects == 0
    assert states.seen == [(OFFLINE, source.ended)]


def test_backoff_doubles_with_jitter_up_to_the_cap():
    for attempt, expected in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (50, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0) for _ in range(200)]
        assert all(0.5 * expected <= d <= expected for d, _ in delays)
        assert max(d for d, _ in delays) - min(d for d, _ in delays) > 0.1 * expected  # jittered
        assert all(capped == (expected >= 30.0) for _, capped in delays)


def test_mjpeg_stream_that_dies_reconnects_with_backoff_and_resumes(sample_video):
    server = MjpegServer.from_video(str(sample_video), count=30).start()
    states = States()
    options = SourceOptions(open_timeout=2, read_timeout=2, reconnect_initial=0.2, reconnect_max=1.0)
    source = FrameSource(server.url, options, states).start()
    try:
        frame, seq = source.newest(0, timeout=10)
        assert frame is not None and frame.shape == (576, 768, 3)
        server.stop()
        wait_for(lambda: states.has(RECONNECTING, "stream lost"), 10, "the loss to be reported")
        wait_for(lambda: states.has(OFFLINE, "reconnect attempt"), 15, "offline once the backoff is capped")
        assert source.alive  # still retrying
        lost_at = source.frames_read
        server.start()  # the same port
        wait_for(lambda: states.seen[-1][0] == ONLINE, 15, "online again")
        frame, _ = source.newest(seq, timeout=10)
        assert frame is not None and source.frames_read > lost_at
        assert server.connections == 2 and source.reconnects >= 2
    finally:
        source.stop()
        server.stop()


def test_probe_answers_within_its_timeout(sample_video, tmp_path):
    server = MjpegServer.from_video(str(sample_video), count=5).start()
    stalled = StalledServer()
    try:
        ok, message = probe(server.url, timeout=5)
        assert ok and message == "reachable: 768x576"
        started = time.monotonic()
        ok, message = probe(stalled.url, timeout=1.5)
        assert not ok and "within 1.5s" in message
        assert time.monotonic() - started < 4
        ok, message = probe(str(tmp_path / "missing.avi"), timeout=2)
        assert not ok and "does not exist" in message
    finally:
        server.stop()
        stalled.close()


def test_a_file_keeps_its_own_timeline_across_loops(numbered_video):
    source = FrameSource(str(numbered_video), SourceOptions(loop_files=True, pace="fast")).start()
    try:
        positions, seq = [], 0
        for _ in range(45):
            frame, seq = source.newest(seq, timeout=5)
            positions.append(round(source.position, 2))
        # 10 fps: 0.1 s a frame, the second pass continues at 2.0 s instead of starting again at 0
        assert positions == [round(0.1 * i, 2) for i in range(45)]
    finally:
        source.stop()


def test_a_stream_that_stalls_without_closing_counts_as_lost_after_the_read_timeout(sample_video):
    server = MjpegServer.from_video(str(sample_video), count=10).start()
    states = States()
    source = FrameSource(server.url, SourceOptions(open_timeout=2, read_timeout=1.5, reconnect_initial=0.2,
                                                   reconnect_max=0.5), states).start()
    try:
        wait_for(lambda: states.has(ONLINE), 10, "online")
        server.paused.set()
        paused_at = time.monotonic()
        wait_for(lambda: states.has(RECONNECTING, "stream lost"), 10, "the stall to be noticed")
        assert 1.0 < time.monotonic() - paused_at < 6
        server.paused.clear()
        wait_for(lambda: states.seen[-1][0] == ONLINE and server.connections >= 2, 10, "back online")
    finally:
        source.stop()
        server.stop()


@pytest.fixture()
def repo(tmp_path, monkeypatch) -> Path:
    """A repository with a media folder holding vtest.avi, a file beside it outside the media folder, and the
    working directory at the repository's root."""
    root = tmp_path / "repo"
    (root / ".media" / "sub").mkdir(parents=True)
    (root / ".media" / "vtest.avi").write_bytes(b"video")
    (root / "secret.txt").write_text("not a camera")
    monkeypatch.chdir(root)
    return root


def test_a_media_file_is_accepted_however_its_path_is_written(repo, monkeypatch):
    media, video = repo / ".media", str((repo / ".media" / "vtest.avi").resolve())
    for url in [".media/vtest.avi", "./.media/vtest.avi", ".media/sub/../vtest.avi",  # from the working directory
                "vtest.avi", "sub/../vtest.avi",                                    # from the media folder
                video, f"file://{video}", "file:.media/vtest.avi"]:
        assert check_url(url, media) == video, url
        assert check_url(url, Path(".media")) == video, url  # TC_MEDIA_DIR given relative to the working directory
    monkeypatch.chdir(media / "sub")
    assert check_url("../vtest.avi", media) == video  # only the working-directory reading stays inside
    monkeypatch.chdir(media)
    assert check_url("vtest.avi", media) == video     # both readings are the same file


def test_the_media_folder_reading_wins_when_both_readings_exist(repo):
    inner = repo / ".media" / ".media"
    inner.mkdir()
    (inner / "vtest.avi").write_bytes(b"another video")
    assert check_url(".media/vtest.avi", repo / ".media") == str(inner.resolve() / "vtest.avi")


def test_a_missing_file_is_stored_in_the_media_folder(repo):
    media = (repo / ".media").resolve()
    assert check_url("later.avi", repo / ".media") == str(media / "later.avi")
    assert check_url("sub/later.avi", repo / ".media") == str(media / "sub" / "later.avi")


def test_paths_outside_the_media_folder_are_refused_however_they_are_written(repo, tmp_path):
    outside = repo / "secret.txt"
    (repo / ".media" / "escape.avi").symlink_to(outside)      # a link in the media folder to a file outside
    (repo / ".media" / "gone.avi").symlink_to(tmp_path / "nowhere.avi")
    (repo / "vtest-link.avi").symlink_to(repo / ".media" / "vtest.avi")  # outside, pointing inside: fine
    media = repo / ".media"
    for url in ["../secret.txt", ".media/../secret.txt/", ".media/../../repo/secret.txt", "../../etc/passwd",
                str(outside), f"file://{outside}", "file:../secret.txt", "escape.avi", ".media/escape.avi",
                "gone.avi", "/etc/passwd", "~/.ssh/id_rsa", "sub/../../secret.txt"]:
        with pytest.raises(UrlRefused, match="outside the media folder"):
            print(url, "->", check_url(url, media))
    assert check_url("vtest-link.avi", media) == str((media / "vtest.avi").resolve())
