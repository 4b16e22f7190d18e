"""`traffic-celery capture` (or `python -m traffic_celery.capture`): capture nodes on their own, for capture loops
beside or instead of the web tier's, on this machine or others.

It runs `TC_CAPTURE_PROCESSES` capture nodes (default `auto`: one per core, since one process uses one core),
each in a process of its own under a supervisor that restarts a dead one (:mod:`traffic_celery.capture.processes`);
with `TC_CAPTURE_PROCESSES=1`, one node in this process. A node loads the detection model, then claims its fair
share of the cameras from the registry in Redis (leases renewed every `TC_CAPTURE_HEARTBEAT` seconds) and runs
their loops; when it dies its cameras restart on another node within `TC_CAPTURE_LEASE_TTL` seconds. Set
`TC_CAPTURE_IN_WEB=false` on the web tier to keep capture off it. SIGTERM/SIGINT hand the cameras over.
"""

from __future__ import annotations

import logging

from traffic_celery.capture.processes import main as run
from traffic_celery.logs import setup_logging
from traffic_celery.settings import get_settings

logger = logging.getLogger(__name__)


def main() -> None:
    settings = get_settings()
    setup_logging(settings, "capture")
    run(settings)


if __name__ == "__main__":
    main()
