"""`python -m workers.flower`: Flower on the project's Celery app, behind basic auth.

`TC_FLOWER_BASIC_AUTH=user:password[,user2:password2]` turns basic auth on (given to Flower through its
`FLOWER_BASIC_AUTH` variable, so the password is not on the command line for `ps` to show). Without it, Flower
binds 127.0.0.1 only, whatever `TC_FLOWER_HOST` says, and says so: the same rule as the web tier without a token.

Flower learns about tasks from the workers' monitoring events, so it connects to where they go,
`TC_EVENTS_URL` (given as Celery's `BROKER_URL` variable): the broker itself on Redis, the Redis of
`TC_REDIS_URL` on Kafka (see `workers/events.py`). On Kafka, Flower's broker page and its remote-control
actions (shutdown, pool resize, rate limits) reach nobody: they are broadcasts, and no worker listens for
broadcasts on Kafka.
"""

from __future__ import annotations

import logging
import os
import sys

from traffic_celery.logs import setup_logging
from traffic_celery.net import is_loopback
from traffic_celery.settings import get_settings

logger = logging.getLogger("workers.flower")


def main(argv: list[str]) -> None:
    settings = get_settings()
    setup_logging(settings, "flower")
    env = dict(os.environ)
    env["BROKER_URL"] = settings.effective_events_url
    host = settings.flower_host
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    else:
        env.pop("FLOWER_BASIC_AUTH", None)
        if not is_loopback(host):
            logger.warning("no TC_FLOWER_BASIC_AUTH: Flower binds 127.0.0.1 instead of %s; set it to listen there",
                           host)
            host = "127.0.0.1"
    args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", f"--address={host}",
            f"--port={settings.flower_port}", *argv]
    os.execvpe(sys.executable, args, env)


if __name__ == "__main__":
    main(sys.argv[1:])
