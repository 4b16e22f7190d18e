"""The Celery app (`workers.celery_app:app`). Configuration lives in `celeryconfig.py`; tasks never import the
Flask app.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

import celeryconfig
from traffic_celery.logs import install_secret_filter
from traffic_celery.settings import Settings


def make_app(settings: Settings | None = None) -> Celery:
    """The worker's app from `celeryconfig`, or a producer app for explicit settings (web tier, tests)."""
    celery = Celery("traffic_celery", set_as_current=settings is None)
    if settings is None:
        celery.config_from_object("celeryconfig")
        from workers import events, task_metrics  # noqa: F401  (task_metrics connects Celery's signals)

        events.install(celery)
    else:
        celery.conf.update(celeryconfig.config_for(settings))
    return celery


app = make_app()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_secrets(logger, **_kwargs) -> None:
    install_secret_filter(logger)
