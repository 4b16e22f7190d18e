"""Turns of the capture loops of one process (capture.turns), with real threads and a real capture node:

- a turn is held by one loop at a time, however many ask at once;
- waiting loops are served earliest due first (a camera that fell behind goes first), ties in arrival order;
- a node's loops take their turns from the node's one `Turns` (`TC_CAPTURE_TURNS`, on by default), and from their
  own when it is off; each frame's wait for its turn is in `tc_capture_turn_wait_seconds`.
"""

from __future__ import annotations

import threading
import time
import uuid

from traffic_celery.capture.node import CaptureNode
from traffic_celery.capture.turns import Turns
from traffic_celery.registry import CameraConfig, CameraRegistry
from traffic_celery.safety import synthetic
from traffic_celery.settings import REPO_ROOT, Settings
from traffic_celery.telemetry import instruments
from traffic_celery.vision.detection import Detector

from .conftest import wait_for


def test_one_holder_at_a_time():
    turns, inside, most, lock = Turns(), [0], [0], threading.Lock()
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for i in range(200):
            with turns.turn(due=float(i)):
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0)  # give the others every chance to get in
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1 and turns.served == 1600 and turns.waited > 0 and turns.waiting == 0


def test_waiting_loops_are_served_earliest_due_first():
    turns, order = Turns(), []

    def waiter(due: float) -> None:
        with turns.turn(due=due):
            order.append(due)

    with turns.turn(due=0.0):
        threads = []
        for k, due in enumerate((3.0, 1.0, 2.0, 1.0)):
            threads.append(threading.Thread(target=waiter, args=(due,)))
            threads[-1].start()
            wait_for(lambda k=k: turns.waiting == k + 1, 10, lambda: f"{turns.waiting} waiting")
        assert order == []  # nobody got in while the turn was held
    for t in threads:
        t.join(10)
    assert order == [1.0, 1.0, 2.0, 3.0]


def _node_frames(isolated_redis, tmp_path, request, turns_on: bool) -> tuple[CaptureNode, int]:
    settings = Settings(redis_url=isolated_redis.url, capture_heartbeat=0.2, loop_files=True, file_pace="fast",
                        capture_turns=turns_on, database_url=f"sqlite:///{tmp_path / 'h.db'}")
    r = isolated_redis.client
    (REPO_ROOT / ".media").mkdir(exist_ok=True)
    video = REPO_ROOT / ".media" / f"test-turns-{uuid.uuid4().hex[:6]}.avi"
    synthetic.render(synthetic.conflict_scene(), video, fps=10, seconds=2)
    request.addfinalizer(lambda: video.unlink(missing_ok=True))
    registry = CameraRegistry(r)
    for i in range(3):
        registry.put(CameraConfig(camera_id=f"turns-{i}", url=str(video), detector="colour"))

    def no_model() -> Detector:
        raise AssertionError("colour cameras load no model")

    node = CaptureNode(settings, r, no_model, lambda job: "task", node_id="node-turns").start()
    request.addfinalizer(node.stop)
    wait_for(lambda: len(node.loops()) == 3 and all(loop.frames_analysed >= 5 for loop in node.loops().values()),
             30, lambda: f"three cameras analysing: {[(c, lp.frames_analysed) for c, lp in node.loops().items()]}")
    return node, sum(loop.frames_analysed for loop in node.loops().values())


def _turn_waits() -> float:
    """Frames that waited for a turn (observed), from the process's metrics registry."""
    return sum(sample.value for family in instruments.registry().collect() for sample in family.samples
               if sample.name == "tc_capture_turn_wait_seconds_count")


def test_a_node_s_loops_take_turns(isolated_redis, tmp_path, request):
    before = _turn_waits()
    node, frames = _node_frames(isolated_redis, tmp_path, request, turns_on=True)
    assert node.turns.served >= frames  # every analysis took a turn of the node's (the count read after)
    assert _turn_waits() - before >= frames  # and each one's wait is in tc_capture_turn_wait_seconds


def test_with_turns_off_each_loop_analyses_on_its_own(isolated_redis, tmp_path, request):
    node, frames = _node_frames(isolated_redis, tmp_path, request, turns_on=False)
    assert frames >= 15 and node.turns.served == 0
