"""`python -m workers [celery worker options]`: a worker on every key's queue `llm.<id>` and on `results`.

Extra options go to `celery worker`, for example `python -m workers -Q llm.key-1` for a worker on one key.
"""

import sys

from traffic_celery.keys import KeyPool
from traffic_celery.names import RESULTS_QUEUE
from traffic_celery.settings import get_settings
from workers.celery_app import app


def main(argv: list[str]) -> None:
    settings = get_settings()
    queues = ",".join([*KeyPool.from_settings(settings).queues, RESULTS_QUEUE])
    defaults = ["worker", "-Q", queues, "--concurrency", str(settings.worker_concurrency),
                "--loglevel", settings.log_level]
    app.worker_main(defaults + argv)


if __name__ == "__main__":
    main(sys.argv[1:])
