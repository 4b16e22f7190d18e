"""What the system keeps in Redis and tells the clients: crops, latest assessment, alert history, dead letters,
and the events on each camera's pub/sub channel (relayed to WebSocket clients by every web process).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, cast

import redis
from pydantic import BaseModel
from redis.commands.core import Script

from traffic_celery import names
from traffic_celery.protocol import Assessment, EventType, Incident, encode

logger = logging.getLogger(__name__)

ALERTS_MAXLEN = 1000
LATEST_TTL = 3600


def publish(r: redis.Redis, camera_id: str, event_type: EventType, data: BaseModel | dict[str, Any]) -> int:
    """Publish an event on the camera's channel; returns how many web processes received it."""
    return int(r.publish(names.events_channel(camera_id), encode(event_type, data)))


INCIDENT_STREAM_KEPT = 10000  # incident events the notifiers can catch up with (about a day of a busy site)


def publish_incident(r: redis.Redis, incident: Incident) -> None:
    """An `incident` event to the camera's viewers (pub/sub) and to the notifiers (the stream they read in a
    consumer group, so a notifier that was away catches up), in one round trip."""
    pipe = r.pipeline(transaction=False)
    pipe.publish(names.events_channel(incident.cameraId), encode(EventType.INCIDENT, incident))
    pipe.xadd(names.INCIDENT_STREAM, {"incident": incident.model_dump_json()}, maxlen=INCIDENT_STREAM_KEPT,
              approximate=True)
    pipe.execute()


def store_image(r: redis.Redis, jpeg: bytes, ttl: int) -> str:
    """Store a crop under `tc:img:<id>` with a TTL and return its key (tasks carry the key, not the bytes)."""
    key = names.image_key(uuid.uuid4().hex)
    r.set(key, jpeg, ex=ttl)
    return key


def load_image(r: redis.Redis, key: str) -> bytes | None:
    if not key.startswith("tc:img:"):
        raise ValueError(f"not an image key: {key!r}")
    return cast("bytes | None", r.get(key))  # the project's clients return bytes (no decode_responses)


_scripts: dict[str, Script] = {}


def _script(r: redis.Redis, text: str) -> Script:
    """The script object of `text`, made once per process (EVALSHA: Redis keeps it compiled, the body is not
    sent with each call); call it with `client=r`."""
    script = _scripts.get(text)
    if script is None:
        script = _scripts[text] = r.register_script(text)
    return script


# Atomic: a task's assessment is stored and published once, however often its callback is delivered.
_STORE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) == false then return 0 end
local crop = redis.call('GET', KEYS[5])
if crop then redis.call('SET', KEYS[6], crop, 'EX', tonumber(ARGV[5])) end
redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[3]))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'assessment', ARGV[1])
redis.call('PUBLISH', KEYS[4], ARGV[2])
if ARGV[6] == '1' then
  redis.call('RPUSH', KEYS[7], ARGV[1])
  redis.call('LTRIM', KEYS[7], -1000, -1)
  redis.call('EXPIRE', KEYS[7], 3600)
end
return 1
"""
INCIDENT_RISK = ("medium", "high")  # verdicts that open an incident (or keep one open)


def store_assessment(r: redis.Redis, assessment: Assessment, snapshot_ttl: int = 7 * 86400) -> bool:
    """Keep the camera's latest assessment (TTL), append it to its capped alert history, keep a copy of its crop
    as the alert's snapshot (`tc:snap:<camera id>:<task id>`, `snapshot_ttl`) and publish `risk_assessment`, all
    in one atomic step, once per task id. A verdict that matters to incidents (medium or high, or about a group
    with an open incident) is also queued for the camera's capture loop (`tc:camera:<id>:verdicts`), in the same
    step: an incident gets each verdict once, however often the callback is delivered. False if it was done
    already."""
    camera_id, task_id = assessment.cameraId, assessment.taskId
    # serialised once (pydantic's own JSON, compact, what `encode` would give): the event wraps the same text
    data = assessment.model_dump_json(exclude_none=True)
    event = '{"type":' + json.dumps(EventType.RISK_ASSESSMENT.value) + ',"data":' + data + "}"
    keys = [f"tc:done:{task_id}", names.latest_key(camera_id), names.alerts_key(camera_id),
            names.events_channel(camera_id), assessment.imageKey or "tc:img:none",
            names.snapshot_key(camera_id, task_id), names.verdicts_key(camera_id)]
    for_incidents = assessment.riskLevel in INCIDENT_RISK or assessment.incidentId is not None
    done = _script(r, _STORE_ONCE)(keys=keys, args=[data, event, LATEST_TTL, ALERTS_MAXLEN, snapshot_ttl,
                                                     "1" if for_incidents else "0"], client=r)
    return bool(done)


def alert_history(r: redis.Redis, camera_id: str, limit: int = 20,
                  before: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the camera's alerts, newest first, each with its stream id as `alertId`; and the `before`
    cursor of the next page (None at the end)."""
    end = f"({before}" if before else "+"
    rows = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                r.xrevrange(names.alerts_key(camera_id), max=end, min="-", count=limit + 1))
    items = []
    for stream_id, fields in rows[:limit]:
        item = json.loads(fields[b"assessment"])
        item["alertId"] = stream_id.decode()
        items.append(item)
    return items, (items[-1]["alertId"] if len(rows) > limit else None)


def snapshot(r: redis.Redis, camera_id: str, task_id: str) -> bytes | None:
    """The crop kept with camera `camera_id`'s alert `task_id` (None if expired, or not that camera's alert)."""
    return cast("bytes | None", r.get(names.snapshot_key(camera_id, task_id)))


def latest_assessment(r: redis.Redis, camera_id: str) -> dict[str, Any] | None:
    raw = r.get(names.latest_key(camera_id))
    return json.loads(raw) if raw else None


def dead_letter(r: redis.Redis, task_id: str, reason: str, payload: dict[str, Any]) -> None:
    """Record a task that will not be retried, with its reason, in `tc:dlq` (capped)."""
    entry = {"taskId": task_id, "reason": reason, "at": time.time(), "payload": payload}
    r.xadd(names.DLQ, {"entry": json.dumps(entry, separators=(",", ":"))}, maxlen=10000, approximate=True)
    logger.warning("dead-lettered task %s: %s", task_id, reason)
