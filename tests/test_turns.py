"""Turns of the capture loops of one process (capture.turns), with real threads and a real capture node:

- a turn is held by one loop at a time, however many ask at once;
- waiting loops are served earliest due first (a camera that fell behind goes first), ties in arrival order;
- a node's loops take their turns from the node's one `Turns` (`TC_CAPTURE_TURNS`, on by default), and from their
  own when it is off; each frame's wait for its turn is in `tc_capture_turn_wait_seconds` (not when off);
- a frame's time is when it was read, not when its turn came; a loop let go while it waits analyses nothing more;
- the capture side's task producer gives up on a broker that accepts connections and never answers, instead of
  holding its process's turn for ever.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
import uuid

import pytest

from traffic_celery import names
from traffic_celery.broker.config import producer_app
from traffic_celery.capture.loop import CaptureLoop
from traffic_celery.capture.node import CaptureNode
from traffic_celery.capture.turns import Turns
from traffic_celery.protocol import EventType, decode
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

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert most[0] == 1 and turns.served == 1600 and turns.waited > 0 and turns.waiting == 0


def test_waiting_loops_are_served_earliest_due_first():
    turns, order = Turns(), []

    def waiter(due: float, name: str) -> None:
        with turns.turn(due=due):
            order.append(name)

    with turns.turn(due=0.0):
        threads = []
        for k, (due, name) in enumerate(((3.0, "late"), (1.0, "first of two"), (2.0, "middle"),
                                         (1.0, "second of two"))):
            threads.append(threading.Thread(target=waiter, args=(due, name), daemon=True))
            threads[-1].start()
            wait_for(lambda k=k: turns.waiting == k + 1, 10, lambda: f"{turns.waiting} waiting")
        assert order == []  # nobody got in while the turn was held
    for t in threads:
        t.join(10)
    assert order == ["first of two", "second of two", "middle", "late"]


def test_an_interrupted_wait_leaves_the_queue():
    """Ctrl-C in the main thread while it waits for a turn: it leaves the queue, and the turn goes on to others."""
    turns, holding, release = Turns(), threading.Event(), threading.Event()

    def hold() -> None:
        with turns.turn(due=0.0):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def interrupt() -> None:
        def blocked() -> bool:  # queued and blocked inside Event.wait
            frame = sys._current_frames().get(main)
            return turns.waiting == 1 and frame is not None and frame.f_code.co_name == "wait"

        wait_for(blocked, 10, lambda: "the main thread to wait for its turn")
        signal.pthread_kill(main, signal.SIGINT)

    # Python's own Ctrl-C handler, whatever this process inherited (a background job starts with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            with turns.turn(due=1.0):
                pytest.fail("got the turn it was interrupted waiting for")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert turns.waiting == 0
    release.set()
    holder.join(10)
    got: list[str] = []

    def take() -> None:
        with turns.turn(due=2.0):
            got.append("in")

    later = threading.Thread(target=take, daemon=True)
    later.start()
    later.join(10)
    assert got == ["in"]  # the turn is free, not stuck with the interrupted waiter


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
    before = _turn_waits()
    node, frames = _node_frames(isolated_redis, tmp_path, request, turns_on=False)
    assert frames >= 15 and node.turns.served == 0
    assert _turn_waits() == before  # no turn to wait for: nothing observed


def _held_loop(isolated_redis, tmp_path, request, turns: Turns) -> CaptureLoop:
    """A capture loop on the synthetic scene at real-time pace (a live camera's clock), sharing `turns`."""
    settings = Settings(redis_url=isolated_redis.url, loop_files=True, file_pace="realtime",
                        database_url=f"sqlite:///{tmp_path / 'h.db'}")
    (REPO_ROOT / ".media").mkdir(exist_ok=True)
    video = REPO_ROOT / ".media" / f"test-held-{uuid.uuid4().hex[:6]}.avi"
    synthetic.render(synthetic.conflict_scene(), video, fps=10, seconds=2)
    request.addfinalizer(lambda: video.unlink(missing_ok=True))

    def no_model() -> Detector:
        raise AssertionError("colour cameras load no model")

    loop = CaptureLoop(CameraConfig(camera_id="held", url=str(video), detector="colour"), settings,
                       isolated_redis.client, no_model, lambda job: "task", turns=turns)
    request.addfinalizer(loop.stop)
    return loop


def test_a_frame_s_time_is_when_it_was_read_not_when_its_turn_came(isolated_redis, tmp_path, request):
    turns = Turns()
    pubsub = isolated_redis.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(names.events_channel("held"))
    request.addfinalizer(pubsub.close)
    with turns.turn(due=0.0):  # another camera's analysis, a long one
        loop = _held_loop(isolated_redis, tmp_path, request, turns).start()
        wait_for(lambda: turns.waiting == 1, 20, lambda: "the loop to wait for its turn with a frame")
        queued_at = time.time()
        time.sleep(1.0)  # the other analysis lasts a second: a fixed time by design
        released_at = time.time()

    def first_frame() -> dict | None:
        message = pubsub.get_message(timeout=0.2)
        if message is None:
            return None
        event_type, data = decode(message["data"])
        return data if event_type == EventType.DETECTION_RESULT else None

    event = wait_for(first_frame, 20, lambda: "the loop's first detection_result")
    assert loop.frames_analysed >= 1
    assert event["timestamp"] <= queued_at + 0.05, (event["timestamp"], queued_at, released_at)


def test_a_loop_let_go_while_it_waits_analyses_nothing_more(isolated_redis, tmp_path, request):
    turns = Turns()
    with turns.turn(due=0.0):
        loop = _held_loop(isolated_redis, tmp_path, request, turns).start()
        wait_for(lambda: turns.waiting == 1, 20, lambda: "the loop to wait for its turn with a frame")
        loop.stop_async()  # the node let the camera go; another node may run it now
    assert loop.done.wait(20)
    assert loop.frames_analysed == 0 and loop.failed is None


def test_the_task_producer_gives_up_on_a_broker_that_never_answers(tmp_path):
    """A broker that accepts connections and says nothing (a hung Redis, a black-holed route): sending a task
    fails within the Redis timeout's retries instead of hanging the capture loop, and its process's turn."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])  # read nothing, answer nothing
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    settings = Settings(broker_url=f"redis://127.0.0.1:{server.getsockname()[1]}/0", redis_timeout=0.5,
                        database_url=f"sqlite:///{tmp_path / 'h.db'}")
    outcome: list[BaseException | str] = []

    def send() -> None:
        try:
            producer_app(settings).send_task("workers.assess.assess_group", args=[{}], queue="llm.silent")
            outcome.append("sent")
        except Exception as exc:  # what Celery raises for it: kombu's OperationalError or a Redis timeout
            outcome.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(60)
    try:
        assert not sender.is_alive(), "send_task still hangs on a broker that never answers"
        assert outcome and isinstance(outcome[0], Exception), outcome
    finally:
        server.close()
        for conn in accepted:
            conn.close()
