"""Redis key, channel and queue names of DESIGN.md, in one place. Every Redis key starts with `tc:`."""

from __future__ import annotations

import re

CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EVENTS_PATTERN = "tc:camera:*:events"
DLQ = "tc:dlq"
RESULTS_QUEUE = "results"
ROUTER_COUNTER = "tc:router:rr"


def image_key(image_id: str) -> str:
    return f"tc:img:{image_id}"


def latest_key(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:latest"


def alerts_key(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:alerts"


def events_channel(camera_id: str) -> str:
    return f"tc:camera:{camera_id}:events"


def camera_from_channel(channel: str) -> str:
    """`tc:camera:<id>:events` -> `<id>`."""
    return channel.split(":", 2)[2].rsplit(":", 1)[0]
