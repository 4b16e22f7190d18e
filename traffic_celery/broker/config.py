"""Celery configuration, from the one settings object (`TC_*` env vars), and the producer app.

JSON only; a task is acknowledged after it ran (`task_acks_late`) and given back if its worker process dies
(`task_reject_on_worker_lost`), so a killed worker loses nothing. Task names are `workers.<module>.<name>`.
On Kafka (`TC_BROKER_URL=confluentkafka://host:9092`) a worker polls each queue (topic) for
`TC_KAFKA_POLL_INTERVAL` seconds in turn, and the worker's consumer class `workers.events:Consumer` sends the
monitoring events through Redis (`TC_EVENTS_URL`), since Kafka has no fanout to carry them. README "Kafka" has
the rest.

On a `redis://` broker the transport is :mod:`traffic_celery.broker.redis_transport` (kombu's, with a fix that
keeps a worker alive when Redis vanishes mid-BRPOP), with task priorities: ten steps, 0 the most urgent (the
LLM budget, :mod:`traffic_celery.llm.budget`, gives every assessment one). Kafka has no priorities.
Producers (the capture side, the web tier) build their app with :func:`producer_app`; they send tasks by name and
never import the task modules.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import after_task_publish

from traffic_celery import names
from traffic_celery.broker import redis_transport
from traffic_celery.llm import budget
from traffic_celery.settings import Settings
from traffic_celery.telemetry import instruments


def config_for(settings: Settings) -> dict[str, Any]:
    """Celery's configuration for `settings` (workers and producers alike)."""
    if settings.broker_is_redis:
        # a task whose worker died unacknowledged goes back on its queue after the visibility timeout; kombu
        # looks for such tasks every unacked_restore_interval x throttle seconds (100 s by default): make it
        # a fifth of the timeout, at most 10 s
        transport_options: dict[str, Any] = {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 5)),
            "unacked_restore_throttle": 1,
            # task priorities (traffic_celery.llm.budget): one Redis list per step 0..9 per queue, named
            # `<queue><sep><step>` (step 0 is the queue itself); a worker's BRPOP lists step 0 of all its
            # queues, then step 1, ..., so the most urgent task of any queue goes first (0 is the highest)
            "priority_steps": budget.PRIORITY_STEPS,
            "sep": budget.PRIORITY_SEP,  # kombu's default, explicit: queue depths are read with the same names
            # among tasks of the same priority, the key queues stay in turn (kombu's default "round_robin"):
            # "priority" would always serve the first queue of the worker's list first, so one key's tasks
            # would take the worker slots while another key's wait
            "queue_order_strategy": "round_robin"}
    else:
        transport_options = {"wait_time_seconds": settings.kafka_poll_interval}
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": {"socket_timeout": settings.redis_timeout},
        "result_expires": 3600,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # no task holds a worker slot for ever: a call ends at TC_LLM_TIMEOUT, so these only catch the
        # unforeseen (a provider trickling bytes, a stuck DNS lookup); the soft limit retries, the hard one kills
        "task_soft_time_limit": settings.llm_timeout + settings.limit_max_wait + 30,
        "task_time_limit": settings.llm_timeout + settings.limit_max_wait + 60,
        "task_default_queue": names.RESULTS_QUEUE,
        "task_routes": {"workers.results.*": {"queue": names.RESULTS_QUEUE},
                        "workers.webhooks.*": {"queue": names.WEBHOOKS_QUEUE}},
        # events for Flower
        "worker_send_task_events": True,
        "task_send_sent_event": settings.events_on_broker,
        "worker_consumer": "workers.events:Consumer",
        "imports": ("workers.assess", "workers.results", "workers.webhooks"),
        "worker_hijack_root_logger": False,
    }
    if settings.effective_broker_url.startswith("redis://"):
        # kombu's transport, with a channel that survives Redis vanishing mid-BRPOP (redis_transport.py)
        config["broker_transport"] = redis_transport.install()
    return config


def _count_publish(sender: str = "", routing_key: str = "", **_kwargs: Any) -> None:
    instruments.get().tasks_enqueued.labels(routing_key or "unknown", sender).inc()


def count_publishes() -> None:
    """Count every task this process publishes (first sends, retries, linked callbacks) in
    `tc_tasks_enqueued_total{queue, task}`, from Celery's `after_task_publish` signal (connected once)."""
    after_task_publish.connect(_count_publish, weak=False, dispatch_uid="traffic_celery.count_publishes")


def producer_app(settings: Settings) -> Celery:
    """A Celery app that only sends tasks (by name) with this configuration: the capture side, the web tier,
    tests and benchmarks. It is not the current app and imports no task module."""
    count_publishes()
    app = Celery("traffic_celery", set_as_current=False)
    app.conf.update(config_for(settings))
    return app
