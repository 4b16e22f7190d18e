"""`python -m workers [celery worker options]`: a worker on every key's queue `llm.<id>`, on `results` and on
`webhooks`.

Extra options go to `celery worker`; `-Q`/`--queues` replaces the default queues, for example
`python -m workers -Q llm.key-1` for a worker on one key, or the Procfile's worker for webhook deliveries
`python -m workers -Q results,webhooks --pool threads`: kombu's Redis transport fetches from a worker's queues in
turn, so under an LLM backlog deliveries on a shared worker would get one fetch in five; their own worker keeps
them prompt.
"""

import sys

from traffic_celery.llm.keys import KeyPool
from traffic_celery.names import RESULTS_QUEUE, WEBHOOKS_QUEUE
from traffic_celery.settings import get_settings
from workers.celery_app import worker_app


def main(argv: list[str]) -> None:
    settings = get_settings()
    queues = ",".join([*KeyPool.from_settings(settings).queues, RESULTS_QUEUE, WEBHOOKS_QUEUE])
    defaults = ["worker", "--concurrency", str(settings.worker_concurrency), "--loglevel", settings.log_level]
    if not any(arg in ("-Q", "--queues") or arg.startswith("--queues=") for arg in argv):
        defaults[1:1] = ["-Q", queues]
    worker_app().worker_main(defaults + argv)


if __name__ == "__main__":
    main(sys.argv[1:])
