"""`traffic-celery capture` (or `python -m traffic_celery.capture`): a capture node on its own, for capture loops
on other machines than the web tier.

It loads the detection model, then claims cameras from the registry in Redis (leases renewed every
`TC_CAPTURE_HEARTBEAT` seconds) and runs their loops; when it dies its cameras restart on another node within
`TC_CAPTURE_LEASE_TTL` seconds. Run as many as you have machines (each takes up to `TC_CAPTURE_MAX_CAMERAS`);
set `TC_CAPTURE_IN_WEB=false` on the web tier to keep capture off it. SIGTERM/SIGINT hand the cameras over.
"""

from __future__ import annotations

import logging
import signal
import threading

from traffic_celery.capture.node import build_capture_node
from traffic_celery.logs import setup_logging
from traffic_celery.redis_conn import connect
from traffic_celery.settings import get_settings
from traffic_celery.telemetry import instruments
from traffic_celery.vision.detection import shared_detector

logger = logging.getLogger(__name__)


def main() -> None:
    settings = get_settings()
    setup_logging(settings, "capture")
    instruments.configure(settings)
    instruments.serve(settings)
    shared_detector(settings)  # load before claiming: a claimed camera starts at once
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    node = build_capture_node(settings, connect(settings)).start()
    logger.info("capture node %s ready", node.node_id)
    stopping.wait()
    node.stop()


if __name__ == "__main__":
    main()
