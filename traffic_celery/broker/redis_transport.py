"""kombu's Redis transport, with a channel that closes cleanly when Redis vanishes in the middle of a BRPOP.

The defect (kombu 5.7, Celery 5.7): when the broker connection drops, the worker's consumer first calls
`connection.collect()` and then `connection.close()`. `collect()` closes the default channel, whose `close()`
starts by reading the pending BRPOP reply; Redis is gone, so that read raises `ConnectionError` *before* the
channel is marked closed, and `collect()` swallows it and detaches the transport (`transport.client = None`).
`close()` then closes the same channel again: this time it gets as far as giving back the unacknowledged
messages, which needs the detached client's host, and raises `AttributeError`. Celery does not count that as a
connection error, logs "Unrecoverable error" and the whole worker exits. It happens whenever Redis goes away while
the worker waits in BRPOP with a task in flight (the reliability test restarts Redis under load and hit it about
once in ten restarts).

The fix keeps kombu's behaviour and only finishes the interrupted close, and turns "the transport is already
detached" into the connection error it is, which Celery handles by reconnecting. Messages that could not be
given back stay in Redis's unacked index and return to their queue after the visibility timeout
(`unacked_restore_interval`, `traffic_celery.broker.config`), as for a killed worker.

One cost cut, too: kombu makes a new `redis.Redis` object for every synchronous operation (each publish, each
acknowledgement, each delivery's bookkeeping), and redis-py 8 spends about 65 µs building one (its table of
response callbacks). The channel here keeps one per connection pool: a client holds no connection of its own
(it takes one from the pool per command), so one object serves every thread as the many did.

`traffic_celery.broker.config` selects this transport (`broker_transport`) only for `redis://` broker URLs; `rediss://`,
`sentinel://` and Kafka keep kombu's own.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

#: the transport's name for `broker_transport`; logs show the broker as `tcredis://:**@host:port/db`
NAME = "tcredis"


class Channel(kombu_redis.Channel):
    # kombu is untyped: its Channel's methods are called through narrow no-untyped-call ignores
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # kombu caches its asynchronous client itself (`Channel.client`)
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:  # first use, or a new pool after a reconnect
            client = self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client

    def close(self) -> None:
        try:
            super().close()  # type: ignore[no-untyped-call]
        except self.connection_errors as exc:
            if self.closed:
                raise
            # the BRPOP read at the start of close() failed (its finally cleared _in_poll): finish the close
            logger.info("the broker went away while this channel waited for a task (%s); closing it anyway", exc)
            super().close()  # type: ignore[no-untyped-call]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is already closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> str:
    """Register the transport under :data:`NAME` with kombu (idempotent) and return the name."""
    TRANSPORT_ALIASES.setdefault(NAME, f"{__name__}:Transport")
    return NAME
