"""A real HTTP MJPEG camera for tests: serves JPEG frames as multipart/x-mixed-replace on a loopback port.

`stop()` closes the listening socket and every open stream (a camera that dies); `start()` again on the same
port (a camera that comes back); `paused` set: open streams stay open but send nothing (a camera that stalls).
:class:`StalledServer` accepts connections and never answers (a camera that hangs while opening).
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from collections.abc import Sequence

import cv2


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class MjpegServer:
    def __init__(self, frames: Sequence[bytes], fps: float = 10.0, port: int = 0):
        self.frames = list(frames)
        self.fps = fps
        self.port = port
        self.connections = 0
        self._server: _Server | None = None
        self._stopping = threading.Event()
        self.paused = threading.Event()

    @classmethod
    def from_video(cls, path: str, count: int = 100, fps: float = 10.0) -> MjpegServer:
        cap = cv2.VideoCapture(path)
        frames = []
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.imencode(".jpg", frame)[1].tobytes())
        cap.release()
        return cls(frames, fps)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> MjpegServer:
        owner = self
        self._stopping = stopping = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not stopping.is_set():
                        if owner.paused.is_set():
                            stopping.wait(0.05)
                            continue
                        jpeg = owner.frames[i % len(owner.frames)]
                        i += 1
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                        stopping.wait(1.0 / owner.fps)
                except OSError:
                    pass  # the client went away

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class StalledServer:
    """Accepts TCP connections and never answers."""

    def __init__(self) -> None:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def close(self) -> None:
        self._sock.close()
