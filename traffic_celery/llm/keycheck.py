"""Checking the configured API keys with one real call each (`traffic-celery keys check`).

For every key, one chat-completions request goes to the key's provider (its own `base_url`, else
`TC_LLM_BASE_URL`) with its model (its own `model`, else `TC_LLM_MODEL`): the project's real prompt
(:func:`traffic_celery.llm.schema.build_messages`) about a made-up group of two road users, with a small JPEG
as the image, sent by :mod:`traffic_celery.llm.client` exactly as a worker sends it. So a key that passes here
works for the workers: the secret, the URL, the model name and the image part are all accepted.

The keys are checked in parallel (one thread each), so the whole check takes about the slowest call. This
module only measures; it logs per key (never the secret: the key id and the masked key) and returns a
:class:`KeyCheck` per key, in the configured order, for the caller to show.

Results (`KeyCheck.result`):

- `ok`: the provider answered with a chat completion (`detail` notes a reply outside the schema: the key works,
  but that model's answers would be retried and dead-lettered);
- `401 rejected` / `403 rejected`: the provider refused the key (revoked, mistyped, no access to the model);
- `429 rate-limited`: the key is valid but over its limit right now;
- `unreachable`: no connection to the provider (wrong `base_url`, DNS, firewall, nothing listening);
- `timeout`: connected, but no answer within the timeout;
- `error <status>`: any other HTTP status (`error 404` is usually an unknown model name), or `error bad reply`
  for a 200 that is not a chat completion.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

from traffic_celery.llm import client
from traffic_celery.llm.keys import ApiKey
from traffic_celery.llm.schema import ReplyError, build_messages, parse_reply
from traffic_celery.settings import Settings

logger = logging.getLogger(__name__)

OK = "ok"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"

# the made-up group the check asks about: a pedestrian two heights from a car
PROBE_GROUP_INDEX = 0
PROBE_MEMBER_IDS = [1, 2]
PROBE_FEATURES: dict[str, Any] = {"objectCount": 2, "classCounts": {"person": 1, "car": 1}, "minGap": 2.0,
                                  "pedestrianVehicleGap": 2.0, "approachSpeed": None, "timeToContact": None}
PROBE_IMAGE_SIZE = 64  # pixels a side: above every provider's minimum, a few hundred bytes as JPEG

_STATUS_IN_MESSAGE = re.compile(r"\((\d{3})\)")


@dataclass(frozen=True)
class KeyCheck:
    """The outcome of one key's call: what to show in a table, with no secret in it."""

    key_id: str
    masked: str  # ApiKey.masked, never the secret
    base_url: str
    model: str
    result: str  # see the module docstring
    latency_ms: float  # from the send to the answer (or to the failure)
    detail: str = ""  # the provider's or the client's message, secret-free; empty when all is well

    @property
    def ok(self) -> bool:
        return self.result == OK


@cache
def probe_jpeg() -> bytes:
    """A small JPEG (a grey road with two blocks on it): real image bytes, as every vision provider wants."""
    import cv2
    import numpy as np

    size = PROBE_IMAGE_SIZE
    image = np.full((size, size, 3), 110, dtype=np.uint8)
    image[size // 4: size // 2, size // 8: size // 4] = (40, 40, 200)  # the pedestrian
    image[size // 2: size * 3 // 4, size // 2: size * 7 // 8] = (200, 120, 40)  # the car
    ok, encoded = cv2.imencode(".jpg", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode the probe image as JPEG")
    return bytes(encoded.tobytes())


def probe_messages() -> list[dict[str, Any]]:
    """The chat messages of the check: the project's own prompt, about the made-up group, with the probe JPEG."""
    return build_messages(PROBE_GROUP_INDEX, PROBE_MEMBER_IDS, PROBE_FEATURES, probe_jpeg())


def _status(exc: client.LLMCallError) -> int | None:
    """The HTTP status of a failed call: the exception's `status` if it has one, else the `(NNN)` of its
    message (the client names the status there)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    match = _STATUS_IN_MESSAGE.search(str(exc))
    return int(match.group(1)) if match else None


def classify(exc: client.LLMCallError) -> str:
    """The result label of a failed call (see the module docstring)."""
    if isinstance(exc, client.RateLimited):
        return "429 rate-limited"
    status = _status(exc)
    if isinstance(exc, client.AuthRejected):
        return f"{status or 401} rejected"
    message = str(exc)
    if isinstance(exc, client.ProviderFailed) and status is None:
        if "timed out" in message:
            return TIMEOUT
        if "cannot reach" in message:
            return UNREACHABLE
        return "error bad reply"
    return f"error {status}" if status is not None else "error"


def _scrub(text: str, key: ApiKey) -> str:
    """`text` with the key's secret masked, should a provider ever echo it back."""
    return text.replace(key.secret, key.masked) if key.secret else text


def check_key(key: ApiKey, settings: Settings, timeout: float) -> KeyCheck:
    """One chat-completions call with `key`; never raises for what the provider or the network does."""
    base_url = (key.base_url or settings.llm_base_url).rstrip("/")
    call = client.prepare(key, settings.llm_base_url, settings.llm_model, probe_messages())
    started = time.monotonic()
    detail = ""
    try:
        completion = client.send(call, timeout)
    except client.LLMCallError as exc:
        result, detail = classify(exc), _scrub(str(exc), key)
    else:
        result = OK
        try:
            parse_reply(completion.text, PROBE_GROUP_INDEX)
        except ReplyError as exc:
            detail = _scrub(f"the key works, but the reply is outside the schema: {exc}", key)
    latency_ms = (time.monotonic() - started) * 1000
    check = KeyCheck(key.id, key.masked, base_url, call.model, result, latency_ms, detail)
    if check.ok:
        logger.info("key %s (%s) at %s, model %s: ok in %.0f ms", key.id, key.masked, base_url, call.model,
                    latency_ms)
    else:
        logger.info("key %s (%s) at %s, model %s: %s in %.0f ms: %s", key.id, key.masked, base_url, call.model,
                    result, latency_ms, detail)
    return check


def check_keys(keys: Sequence[ApiKey], settings: Settings, timeout: float) -> list[KeyCheck]:
    """:func:`check_key` for every key at once (one thread each); the results in the order of `keys`."""
    if not keys:
        return []
    probe_jpeg()  # encoded once, before the threads
    with ThreadPoolExecutor(max_workers=min(16, len(keys)), thread_name_prefix="keycheck") as pool:
        return list(pool.map(lambda key: check_key(key, settings, timeout), keys))
