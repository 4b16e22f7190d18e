"""Webhook targets: who wants which incident events, how the body is built and signed, and when not to page.

Targets come from a YAML file (`TC_WEBHOOKS_FILE`, see `config/webhooks.example.yaml`)::

    targets:
      - name: ops                 # how logs, stats and tasks name it (the URL may hold a token: never logged)
        url: https://ops.example/hooks/traffic
        secret: change-me         # HMAC-SHA256 key; keep the file out of git
        events: [new, end]        # incident states to send (default: new and end)
        minSeverity: medium       # low | medium | high (default low)
        cameras: ["1", "school"]  # default: every camera
        format: json              # json (the Incident) | slack (a Slack-compatible {"text": ...})
        cooldown: 300             # seconds between two pages for one camera (default TC_WEBHOOK_COOLDOWN)

**Signature.** Each request carries `X-TC-Timestamp` (Unix seconds at the attempt) and
`X-TC-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` with the target's secret, so a receiver
can check the body came from us and refuse replays (a timestamp older than five minutes; :func:`verify` does
both). `X-TC-Delivery` (the task id) is the same on every retry of one delivery, for receivers that deduplicate.

**Cooldown, so a flapping incident does not page anyone twenty times.** For each target, the first event of an
incident that the target wants (state in `events`, severity at least `minSeverity`) is a *page*; a camera pages
a target at most once per `cooldown` seconds (a Redis key with a TTL, shared by every notifier). Later events of
an incident whose page went out (its update and end) are always delivered, so the receiver hears the end of what
it was told; events of an incident whose page was suppressed are suppressed too. Suppressed events are counted.

Delivery itself (retries, backoff, dead letter) is the Celery task `workers.webhooks.deliver`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from traffic_celery import names
from traffic_celery.protocol import SEVERITY_RANK, Incident

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-TC-Signature"
TIMESTAMP_HEADER = "X-TC-Timestamp"
DELIVERY_HEADER = "X-TC-Delivery"
EVENT_HEADER = "X-TC-Event"
REPLAY_TOLERANCE = 300.0  # seconds: a receiver refuses an older timestamp
SENT_TTL = 86400  # how long "this incident's page went to this target" is remembered

State = Literal["new", "update", "end"]


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: SecretStr  # may itself hold a token (Slack's do): shown masked
    secret: SecretStr | None = None
    events: tuple[State, ...] = ("new", "end")
    min_severity: Literal["low", "medium", "high"] = Field(default="low", alias="minSeverity")
    cameras: tuple[str, ...] | None = None
    format: Literal["json", "slack"] = "json"
    cooldown: float | None = Field(default=None, ge=0)
    timeout: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: SecretStr) -> SecretStr:
        parts = urlsplit(url.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("cameras", mode="before")
    @classmethod
    def _camera_ids(cls, cameras: Any) -> Any:
        return None if cameras is None else tuple(str(c) for c in cameras)

    @property
    def masked_url(self) -> str:
        """Scheme and host only: paths and queries of webhook URLs often carry a token."""
        parts = urlsplit(self.url.get_secret_value())
        return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/…"

    def wants(self, incident: Incident) -> bool:
        """Whether this event of this incident is for this target (before any cooldown)."""
        return (incident.state in self.events
                and SEVERITY_RANK.get(incident.severity, 0) >= SEVERITY_RANK[self.min_severity]
                and (self.cameras is None or incident.cameraId in self.cameras))


class WebhookConfigError(ValueError):
    pass


def load_targets(path: Path | None) -> dict[str, WebhookTarget]:
    """The targets of the file, by name ({} without a file); WebhookConfigError saying what to fix otherwise."""
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise WebhookConfigError(f"cannot read the webhooks file {path}: {exc.strerror}; check TC_WEBHOOKS_FILE") \
            from exc
    except yaml.YAMLError as exc:
        raise WebhookConfigError(f"the webhooks file {path} is not valid YAML ({exc.__class__.__name__}); "
                                 "see config/webhooks.example.yaml") from exc
    entries = raw.get("targets") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise WebhookConfigError(f"the webhooks file {path} must have a list `targets:`; "
                                 "see config/webhooks.example.yaml")
    targets: dict[str, WebhookTarget] = {}
    for i, entry in enumerate(entries):
        try:
            target = WebhookTarget.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
                                 for e in exc.errors(include_input=False, include_url=False))
            raise WebhookConfigError(f"webhook target #{i + 1} in {path} is invalid: {problems}") from None
        if target.name in targets:
            raise WebhookConfigError(f"webhook target name {target.name!r} appears twice in {path}")
        targets[target.name] = target
    return targets


# --- signing ----------------------------------------------------------------------------------------------------

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` with `secret`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, body: bytes, timestamp: str | None, signature: str | None,
           tolerance: float = REPLAY_TOLERANCE, now: float | None = None) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (not a replay)."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def headers(target: WebhookTarget, body: bytes, event: str, delivery: str, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    found = {"Content-Type": "application/json", "User-Agent": "traffic_celery-webhooks",
             TIMESTAMP_HEADER: str(timestamp), EVENT_HEADER: event, DELIVERY_HEADER: delivery}
    if target.secret is not None:
        found[SIGNATURE_HEADER] = sign(target.secret.get_secret_value(), timestamp, body)
    return found


# --- bodies -----------------------------------------------------------------------------------------------------

def summary(incident: Incident) -> str:
    """One line a person reads on a phone: what, where, how close, what the LLM said."""
    what = (incident.conflictType or "dangerous scene").replace("-", "–")
    where = f"camera {incident.cameraId}" + (f" ({', '.join(incident.zones)})" if incident.zones else "")
    facts = []
    m = incident.metrics
    if m is not None:
        unit = "m" if m.units == "metric" else "×h"
        if m.ttc is not None:
            facts.append(f"TTC {m.ttc:.1f} s")
        if m.pet is not None:
            facts.append(f"PET {m.pet:.1f} s")
        facts.append(f"closest {m.minDistance:.1f} {unit}")
    verdict = incident.verdicts[-1].description if incident.verdicts else ""
    state = {"new": "started", "update": "got worse", "end": "ended"}[incident.state]
    line = f"{incident.severity.upper()} {what} {state} at {where}"
    if facts:
        line += ": " + ", ".join(facts)
    if verdict:
        line += f". {verdict}"
    return line


def body(target: WebhookTarget, incident: Incident) -> bytes:
    if target.format == "slack":
        import json  # noqa: PLC0415

        emoji = {"high": ":rotating_light:", "medium": ":warning:"}.get(incident.severity, ":information_source:")
        return json.dumps({"text": f"{emoji} {summary(incident)}"}).encode()
    return incident.model_dump_json().encode()


# --- cooldown ---------------------------------------------------------------------------------------------------

def _keys(target: str, incident: Incident) -> list[str]:
    return [f"tc:webhook:sent:{target}:{incident.incidentId}", f"tc:webhook:suppressed:{target}:{incident.incidentId}",
            f"tc:webhook:cooldown:{target}:{incident.cameraId}"]


# KEYS: sent, suppressed (per target and incident), cooldown (per target and camera). ARGV: cooldown seconds,
# memory TTL. 1: deliver, 0: suppress. Atomic, so two notifiers never both page for one camera in a cooldown.
_GATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local cooldown = tonumber(ARGV[1])
if cooldown > 0 and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', math.floor(cooldown * 1000)) then
  redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[2]))
  return 0
end
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[2]))
return 1
"""


class Gate:
    """Decides, per target and wanted event, deliver or suppress (the cooldown rule of the module's docstring)."""

    def __init__(self, r: redis.Redis, default_cooldown: float):
        self._script = r.register_script(_GATE)
        self._default = default_cooldown

    def admit(self, target: WebhookTarget, incident: Incident) -> bool:
        cooldown = self._default if target.cooldown is None else target.cooldown
        return bool(self._script(keys=_keys(target.name, incident), args=[cooldown, SENT_TTL]))


def count(r: redis.Redis, target: str, outcome: str) -> None:
    """Per target and outcome (delivered, retried, dead, suppressed), in `tc:stats:webhooks`."""
    r.hincrby(names.WEBHOOK_STATS, f"{target}:{outcome}", 1)
