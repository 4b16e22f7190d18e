"""Redis key, channel and queue names of the system, in one place. Every Redis key starts with `tc:`."""

from __future__ import annotations

import re

CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CAMERA_ID_RULE = "must be a number or a name of letters, digits, '-' or '_' (1-64 characters)"
EVENTS_PATTERN = "tc:camera:*:events"
DLQ = "tc:dlq"
RESULTS_QUEUE = "results"
ROUTER_COUNTER = "tc:router:rr"
CAMERAS = "tc:cameras"  # hash: camera id -> JSON CameraConfig (the camera registry)
CAMERAS_CONTROL = "tc:cameras:control"  # pub/sub: "the registry changed", so capture nodes act at once
CAPTURE_NODES = "tc:capture:nodes"  # sorted set: live capture node ids, scored by when their heartbeat expires (ms)
ASSESS_STATS = "tc:stats:assess"  # hash: LLM calls made per reason, and saved, by the assessment scheduler
INCIDENT_STREAM = "tc:incidents:events"  # stream: every incident event, read by the notifiers (consumer group)
WEBHOOKS_QUEUE = "webhooks"  # the Celery queue of webhook deliveries
WEBHOOK_STATS = "tc:stats:webhooks"  # hash: "<target>:<outcome>" -> count (delivered, retried, dead, suppressed)
WEBHOOK_DEAD = "tc:webhooks:dead"  # stream: webhook deliveries given up (target name, incident, why; no secret)


def image_key(image_id: str) -> str:
    return f"tc:img:{image_id}"


def camera_id(raw: object) -> str:
    """A camera id as the registry keys it: a number or a name; ValueError (saying `CAMERA_ID_RULE`) otherwise."""
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not CAMERA_ID_RE.match(str(raw)):
        raise ValueError(CAMERA_ID_RULE)
    return str(raw)


def worker_key(hostname: str) -> str:
    """A Celery worker's presence (JSON: hostname, pid, queues), alive while the worker consumes."""
    return f"tc:worker:{hostname}"


def snapshot_key(camera_id: str, task_id: str) -> str:
    """An alert's copy of its crop, kept longer than the crop itself, under its camera (so a snapshot is served
    only under the camera whose alert it is)."""
    return f"tc:snap:{camera_id}:{task_id}"


def latest_key(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:latest"


def alerts_key(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:alerts"


def verdicts_key(camera_id: str) -> str:
    """Verdicts on their way to the camera's incident tracker (a list the capture loop drains every frame)."""
    return f"tc:camera:{camera_id}:verdicts"


def events_channel(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:events"


def camera_from_channel(channel: str) -> str:
    """`tc:camera:<id>:events` -> `<id>`."""
    return channel.split(":", 2)[2].rsplit(":", 1)[0]


def owner_key(camera_id: str) -> str:
    """The lease of the capture node that runs the camera (value: node id; expires unless renewed)."""
    return f"tc:camera:{camera_id}:owner"


def status_key(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:status"
