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

import inspect
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.backends.redis import RedisBackend
from celery.signals import after_task_publish
from celery.utils.saferepr import saferepr

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
        "task_send_sent_event": settings.events_on_broker,  # but not for the callback: FastReprAMQP
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


#: tasks sent without Celery's `task-sent` event (see :class:`FastReprAMQP`)
QUIET_SENT = frozenset({"workers.results.on_assessment"})


def fast_repr(value: Any, maxsize: int, maxlevels: int = 3) -> str:
    """`repr(value)` when it fits in `maxsize` characters, else Celery's `saferepr` (which truncates): the
    same display text for our small JSON arguments at a twentieth of saferepr's cost."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__: saferepr copes
        text = None
    if text is not None and len(text) <= maxsize:
        return text
    return str(saferepr(value, maxsize, maxlevels=maxlevels))


class FastReprAMQP(AMQP):  # type: ignore[misc]  # celery is untyped
    """Celery's message builder, used by the producers' and the workers' apps (`Celery(..., amqp=...)`), with
    two cuts:

    - :func:`fast_repr` for the `argsrepr`/`kwargsrepr` headers that Flower and the events show: Celery's
      `saferepr` of an assessment took more CPU than the rest of building the message;
    - no `task-sent` event for the result callback (:data:`QUIET_SENT`), which a worker publishes the moment
      its `assess_group` succeeded and whose `task-received` follows within milliseconds: Flower lists it from
      that event, and the worker saves a second publish per assessment. Every other task keeps its `task-sent`
      (a task moved to another key's queue shows its new routing key)."""

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        call = dict(zip(_AS_TASK_V2_PARAMS, args, strict=False))  # Celery passes most of them by position
        call.update(kwargs)
        if call.get("name") in QUIET_SENT:
            call["create_sent_event"] = False
        levels = self.app.conf.task_repr_maxlevels
        if call.get("argsrepr") is None:
            call["argsrepr"] = fast_repr(call.get("args") or (), self.argsrepr_maxsize, levels)
        if call.get("kwargsrepr") is None:
            call["kwargsrepr"] = fast_repr(call.get("kwargs") or {}, self.kwargsrepr_maxsize, levels)
        return super().as_task_v2(**call)


#: the named parameters of Celery's `AMQP.as_task_v2`, in order (without `self` and `**options`)
_AS_TASK_V2_PARAMS = [name for name, p in inspect.signature(AMQP.as_task_v2).parameters.items()
                      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]


class ProducerResultBackend(RedisBackend):  # type: ignore[misc]  # celery is untyped
    """Celery's Redis result backend for producers: results are read (`AsyncResult(id).state`) as usual, but
    sending a task no longer subscribes to its result channel. Celery's backend subscribes on every send so that
    a later `.get()` need not poll; no producer here waits on a result, and the subscription cost every dispatch
    a SUBSCRIBE and an UNSUBSCRIBE, and Redis a message to the producer per stored result."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def producer_app(settings: Settings) -> Celery:
    """A Celery app that only sends tasks (by name) with this configuration: the capture side, the web tier,
    tests and benchmarks. It is not the current app and imports no task module."""
    count_publishes()
    app = Celery("traffic_celery", set_as_current=False, amqp=FastReprAMQP)
    app.conf.update(config_for(settings))
    if settings.broker_is_redis:  # a broker that stops answering fails a publish instead of hanging it (a
        # capture loop holds its process's turn meanwhile); workers keep kombu's default: their BRPOP blocks
        app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                             "socket_timeout": settings.redis_timeout,
                                             "socket_connect_timeout": settings.redis_timeout}
    backend_url = str(app.conf.result_backend)
    if backend_url.startswith(("redis://", "rediss://")):
        # Celery's `<backend class>+<url>` form: the class above, on the same Redis
        app.conf.result_backend = f"{__name__}:{ProducerResultBackend.__name__}+{backend_url}"
    return app
