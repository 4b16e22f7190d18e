"""The backlog of each Celery queue on the Kafka broker: the consumer lag the router and `/metrics` read there as
they read the queue lists' lengths (LLEN) on Redis.

kombu's confluentkafka transport makes a queue a topic of the same name (``@`` removed) and consumes it in the
consumer group ``<topic>-consumer-group``, committing the group's offset when a task is acknowledged (after it ran:
``task_acks_late``). The backlog of a queue is that group's lag: over the topic's partitions, the high watermark
minus the committed offset, or minus the low watermark where the group has committed nothing (or retention removed
messages past its offset). So it counts the tasks no worker has finished yet, waiting or running (Redis's LLEN
counts only the waiting ones). A topic that does not exist yet has backlog 0.

One measurement asks for every queue at once with an admin client: a metadata request, then in parallel the
partitions' high and low watermarks (ListOffsets) and each group's committed offsets (OffsetFetch, one request per
group): two round trips. It is cached for `TC_KAFKA_LAG_TTL` seconds, so the capture loop's dispatch, which asks
the router for every job, pays it at most once per TTL and per process. Between two measurements the tasks this
process routed to a queue (:meth:`KafkaLag.added`, called by the router's `pick`) are added to its backlog, so a
burst within one TTL is spread over the keys instead of all going to the one that looked least loaded; the next
measurement replaces the estimate (tasks other processes sent appear then). A broker that does not answer within
`TC_KAFKA_LAG_TIMEOUT` leaves the last known values (0 for a queue never measured): one warning when it stops
answering, one line when it answers again, and it is asked again after :data:`RETRY_AFTER` seconds at the
earliest, so a dead broker costs a caller at most one timeout per retry interval.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]  # exported, not in __all__

from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

KAFKA_SCHEMES = ("confluentkafka",)
DEFAULT_PORT = 9092  # kombu's confluentkafka transport's default
RETRY_AFTER = 5.0  # seconds before a broker that did not answer is asked again (at least the TTL)
OFFSET_INVALID = -1001  # librdkafka: no committed offset
_HIGH = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # the high watermark (next offset to be written)
_LOW = OffsetSpec.earliest()  # type: ignore[no-untyped-call]  # the low watermark (oldest offset kept)


def topic_of(queue: str) -> str:
    """The topic of a Celery queue, named as kombu's transport names it (it drops ``@``)."""
    return queue.replace("@", "")


def consumer_group(queue: str) -> str:
    """The consumer group kombu's transport consumes a queue's topic in."""
    return f"{topic_of(queue)}-consumer-group"


def is_kafka_url(url: str) -> bool:
    return url.split("://", 1)[0] in KAFKA_SCHEMES


def bootstrap_servers(url: str) -> str:
    """``host:port`` of a ``confluentkafka://`` broker URL (the first of a ``;`` failover list), the server kombu's
    transport connects to; credentials are dropped, so the result may be logged."""
    first = url.split(";", 1)[0]
    parts = urlsplit(first)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:  # a port that is not a number; the URL may hold a password, so it is not repeated
        raise ValueError("the Kafka broker URL has an invalid port; use confluentkafka://host:9092") from exc
    if parts.scheme not in KAFKA_SCHEMES or not parts.hostname:
        raise ValueError(f"not a Kafka broker URL ({parts.scheme or 'no scheme'}://...); "
                         "use confluentkafka://host:9092")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


class _QuietLog:
    """librdkafka's own log lines (a refused connection is logged at every reconnect attempt) at DEBUG, so a broker
    that is away gives one warning from this module instead of a line per attempt."""

    def __init__(self, log: logging.Logger):
        self._log = log

    def log(self, level: int, msg: str, *args: object) -> None:
        self._log.debug(msg, *args)


class KafkaLag:
    """Backlog per queue on one Kafka broker, measured with an admin client and cached for `ttl` seconds.

    Thread-safe (one measurement at a time; callers meanwhile wait for it and share its result); the admin
    client is made on first use in the calling process (so a prefork child makes its own). `extra_config` goes to
    the admin client (librdkafka properties, for example security settings)."""

    def __init__(self, bootstrap: str, ttl: float = 1.0, timeout: float = 1.0,
                 extra_config: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.monotonic):
        self.bootstrap, self.ttl, self.timeout = bootstrap, ttl, timeout
        self._config: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": "traffic-celery-lag",
                                        **(extra_config or {}),
                                        "logger": _QuietLog(logging.getLogger(f"{__name__}.librdkafka"))}
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}  # topic -> last measured backlog
        self._added: dict[str, int] = {}  # topic -> tasks this process sent there since it was last measured
        self._measured_at: dict[str, float] = {}  # topic -> when (clock)
        self._retry_at = -math.inf
        self._failing = False
        self._admin: AdminClient | None = None
        self._admin_pid = 0
        self.measurements = 0  # measurements attempted so far (two round trips each), failed ones included

    def backlog(self, queues: Iterable[str]) -> dict[str, int]:
        """Each queue's backlog (tasks not finished yet), at most `ttl` seconds old while the broker answers;
        never raises."""
        topics = {queue: topic_of(queue) for queue in queues}
        with self._lock:
            now = self._clock()
            stale = sorted({topic for topic in topics.values()
                            if now - self._measured_at.get(topic, -math.inf) >= self.ttl})
            if stale and now >= self._retry_at:
                self._refresh(stale, now)
            return {queue: self._values.get(topic, 0) + self._added.get(topic, 0) for queue, topic in topics.items()}

    def added(self, queue: str, count: int = 1) -> None:
        """Count `count` tasks this process put (or is about to put) on `queue`: part of its backlog until the next
        measurement, which sees them."""
        topic = topic_of(queue)
        with self._lock:
            self._added[topic] = self._added.get(topic, 0) + count

    def _refresh(self, topics: list[str], now: float) -> None:
        self.measurements += 1
        try:
            measured = self._measure(topics)
        except Exception as exc:  # KafkaException, a future's TimeoutError, or librdkafka refusing the request
            self._retry_at = now + max(self.ttl, RETRY_AFTER)
            if not self._failing:
                self._failing = True
                logger.warning("cannot measure the Kafka backlog on %s (%s); queue depths keep their last known "
                               "values, asked again every %.0f s until it answers", self.bootstrap,
                               _describe(exc), max(self.ttl, RETRY_AFTER))
            return
        if self._failing:
            self._failing = False
            logger.info("the Kafka broker %s answers again: queue depths are measured", self.bootstrap)
        self._retry_at = -math.inf
        self._values.update(measured)
        self._measured_at.update(dict.fromkeys(measured, now))
        for topic in measured:
            self._added.pop(topic, None)

    def _client(self) -> AdminClient:
        if self._admin is None or self._admin_pid != os.getpid():  # librdkafka's threads do not survive a fork
            self._admin, self._admin_pid = AdminClient(self._config), os.getpid()
        return self._admin

    def _measure(self, topics: list[str]) -> dict[str, int]:
        admin = self._client()
        admin.poll(0)  # serve the queued librdkafka log lines (they are delivered only by poll)
        deadline = time.monotonic() + self.timeout

        def left() -> float:
            return max(0.01, deadline - time.monotonic())

        metadata = admin.list_topics(timeout=self.timeout)
        partitions = {topic: sorted(metadata.topics[topic].partitions) for topic in topics
                      if topic in metadata.topics and metadata.topics[topic].error is None}
        wanted = [TopicPartition(topic, p) for topic, ps in partitions.items() for p in ps]
        measured = dict.fromkeys(topics, 0)  # a topic that does not exist (yet) holds no task
        if not wanted:
            return measured
        high = admin.list_offsets({tp: _HIGH for tp in wanted}, request_timeout=left())
        low = admin.list_offsets({tp: _LOW for tp in wanted}, request_timeout=left())
        committed_futures = {topic: admin.list_consumer_group_offsets(  # librdkafka takes one group per request
            [ConsumerGroupTopicPartitions(consumer_group(topic), [TopicPartition(topic, p) for p in ps])],
            request_timeout=left())[consumer_group(topic)] for topic, ps in partitions.items()}
        highs = {(tp.topic, tp.partition): int(_result(f, left()).offset) for tp, f in high.items()}
        lows = {(tp.topic, tp.partition): int(_result(f, left()).offset) for tp, f in low.items()}
        committed: dict[tuple[str, int], int] = {}
        for future in committed_futures.values():
            for tp in _result(future, left()).topic_partitions or []:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                committed[(tp.topic, tp.partition)] = tp.offset
        for tp in wanted:
            where = (tp.topic, tp.partition)
            start = max(committed.get(where, OFFSET_INVALID), lows[where])  # nothing committed: from the start
            measured[tp.topic] += max(0, highs[where] - start)
        return measured


def _result(future: Future[Any], timeout: float) -> Any:
    return future.result(timeout=timeout)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
        return str(exc.args[0].str())  # librdkafka's own sentence, without the KafkaError{...} wrapping
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def build_kafka_lag(settings: Settings) -> KafkaLag | None:
    """The backlog reader of the settings' broker, or None when the broker is not Kafka."""
    if not is_kafka_url(settings.effective_broker_url):
        return None
    return KafkaLag(bootstrap_servers(settings.effective_broker_url), settings.kafka_lag_ttl,
                    settings.kafka_lag_timeout)
