"""The protocol: every message that crosses a process boundary, defined once.

- **WebSocket and pub/sub events** (server → client, and capture/worker → web process through Redis pub/sub):
  the envelope `{"type": EventType, "data": {...}}` in camelCase, built by :func:`encode` and read by
  :func:`decode`. Event types, camera states and error codes are str-Enums, so a misspelt name fails at import,
  not in a browser.
- **Client messages** (browser → server): :class:`ClientMessageType`; ws.py validates their data.
- **The job** (capture loop → `workers.assess.assess_group`, a Celery task argument): :class:`Job`. It carries the
  crop's Redis key and the API key's *id*, never image bytes or a secret.
- **The assessment** (`assess_group` → Redis → every client): :class:`Assessment`.
- **A key's state** as the limiter reports it (`/api/keys`, metrics): :class:`KeyState`.

Producers build these models and dump them (`to_wire()`); consumers validate what they read
(`Job.model_validate(...)`), so a malformed message is refused where it arrives, with the field named.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

RiskLevel = Literal["none", "low", "medium", "high"]
Severity = Literal["low", "medium", "high"]
Units = Literal["metric", "relative"]
ConflictType = Literal["vehicle-pedestrian", "vehicle-cyclist", "vehicle-vehicle"]
SEVERITY_RANK: dict[str, int] = {"none": 0, "low": 1, "medium": 2, "high": 3}


class EventType(StrEnum):
    """Server → client messages (and the pub/sub events they are relayed from)."""

    CONNECTION_ACK = "connection_ack"
    PONG = "pong"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    CAMERA_STATUS = "camera_status"
    STREAM_STOPPED = "stream_stopped"
    DETECTION_RESULT = "detection_result"
    RISK_ASSESSMENT = "risk_assessment"
    INCIDENT = "incident"
    ERROR = "error"


class ClientMessageType(StrEnum):
    """Client → server messages."""

    PING = "ping"
    START_STREAM = "start_stream"
    STOP_STREAM = "stop_stream"
    CHECK_CAMERA = "check_camera"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


class CameraState(StrEnum):
    """A camera's `state` in `camera_status` events, the registry's status and `/api/cameras`."""

    STARTING = "starting"  # registered, no capture node has reported yet
    ONLINE = "online"  # frames arrive
    RECONNECTING = "reconnecting"  # the stream was lost; the next attempt is scheduled
    OFFLINE = "offline"  # the backoff reached its cap, or the source is over
    STOPPED = "stopped"  # by an operator, or its source ended
    REACHABLE = "reachable"  # check_camera: a probe read a frame
    UNREACHABLE = "unreachable"  # check_camera: it did not


class ErrorCode(StrEnum):
    """`code` of an `error` event: every refused request and every failure a client should hear about."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_CAMERA_ID = "invalid_camera_id"
    INVALID_URL = "invalid_url"
    INVALID_FRAME_INTERVAL = "invalid_frame_interval"
    CAMERA_NOT_RUNNING = "camera_not_running"
    MESSAGE_TOO_LARGE = "message_too_large"
    INTERNAL_ERROR = "internal_error"
    CAMERA_FAILED = "camera_failed"
    ASSESSMENT_FAILED = "assessment_failed"
    KEY_DISABLED = "key_disabled"


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says what is wrong."""


def encode(event_type: EventType, data: BaseModel | dict[str, Any]) -> str:
    """One event as sent to clients and published on a camera's channel: compact JSON, camelCase."""
    payload = data.model_dump(mode="json", exclude_none=True) if isinstance(data, BaseModel) else data
    return json.dumps({"type": event_type.value, "data": payload}, separators=(",", ":"))


def decode(raw: bytes | str) -> tuple[EventType, dict[str, Any]]:
    """The type and data of an event read from pub/sub; :class:`ProtocolError` if it is not one."""
    try:
        message = json.loads(raw)
        return EventType(message["type"]), dict(message["data"])
    except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"not an event of the protocol ({exc.__class__.__name__}: {exc})") from exc


class _Wire(BaseModel):
    """camelCase on the wire, unknown fields ignored (a newer producer may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class CameraStatus(_Wire):
    """`camera_status`: `status` 1 only when online (the old clients' field), plus the `state`."""

    cameraId: str
    status: Literal[0, 1]
    state: CameraState
    message: str

    @classmethod
    def of(cls, camera_id: str, state: CameraState, message: str) -> CameraStatus:
        return cls(cameraId=camera_id, status=1 if state in (CameraState.ONLINE, CameraState.REACHABLE) else 0,
                   state=state, message=message)


class StreamStopped(_Wire):
    cameraId: str
    reason: str


class ErrorEvent(_Wire):
    code: ErrorCode
    message: str
    cameraId: str | None = None
    groupId: str | None = None
    taskId: str | None = None
    keyId: str | None = None


class ConflictFacts(_Wire):
    """The near-miss metrics of one pair of road users (`traffic_celery.safety.conflicts`).

    Units: with a calibrated camera (`units` "metric") distances are metres and speeds km/h; without, distances
    are heights of the smaller object and speeds heights/s ("relative"). Times are seconds either way: TTC and
    PET are ratios and keep their meaning without calibration."""

    conflictType: ConflictType
    trackIds: list[int]
    classes: list[str]
    ttc: float | None = None  # time to collision at constant velocities; None: not on a collision course
    pet: float | None = None  # post-encroachment time at the crossing point of the two paths; None: no crossing
    distance: float  # now
    minDistance: float  # smallest distance seen between the two since the pair appeared
    relativeSpeed: float | None = None  # closing speed (> 0: closing)
    speeds: dict[str, float] = Field(default_factory=dict)  # track id -> its speed
    units: Units
    severity: Severity | None = None  # by the thresholds in settings; None: not a near miss
    point: list[float] | None = None  # image point (pixels) of the conflict: the crossing point or the midpoint


class GroupFacts(_Wire):
    """What the detector measured about a group, in object heights (see `vision.types.GroupFeatures`), its zones
    and, when it has a pair with a vehicle, its worst pair's near-miss metrics."""

    objectCount: int
    classCounts: dict[str, int]
    minGap: float
    pedestrianVehicleGap: float | None = None
    approachSpeed: float | None = None
    timeToContact: float | None = None
    zones: list[str] = Field(default_factory=list)
    conflict: ConflictFacts | None = None


class Job(_Wire):
    """One group to assess: the argument of `assess_group`. Retries and moves between keys are the same job
    with `keyId` and the counters changed (:meth:`moved`)."""

    cameraId: str
    groupId: str
    groupIndex: int = Field(ge=0)
    imageKey: str = Field(pattern=r"^tc:img:")
    features: GroupFacts
    memberTrackIds: list[int]
    frameTimestamp: float
    reason: str
    context: str | None = None  # the camera's own words for the prompt ("school crossing, limit 30 km/h")
    incidentId: str | None = None  # the open incident of this group when the job was made
    priority: int = Field(default=5, ge=0, le=9)  # 0 most urgent (`traffic_celery.llm.budget`)
    keyId: str = ""  # set by the dispatcher (the router's choice)
    enqueuedAt: float = 0.0
    failures: int = Field(default=0, ge=0)  # provider failures so far (retried with backoff)
    reroutes: int = Field(default=0, ge=0)  # moves forced by a fault of the key (429, disabled, cooling)
    moves: int = Field(default=0, ge=0)  # moves to a less loaded key (normal operation)
    startedAt: float | None = None  # when the first call was made (queue wait is measured to it)

    def moved(self, **changes: Any) -> Job:
        return self.model_copy(update=changes)


class Assessment(_Wire):
    """The LLM's verdict on one group: made and stored by `assess_group`, sent to clients as
    `risk_assessment`. One per task id, whatever retries or moves the task went through."""

    cameraId: str
    groupId: str
    groupIndex: int
    taskId: str
    riskLevel: RiskLevel
    riskTypes: list[str]
    description: str
    confidence: float = Field(ge=0, le=1)
    dangerObjectIds: list[int]
    llmLatency: float
    llmModel: str
    apiKeyId: str
    frameTimestamp: float
    queueWait: float = 0.0
    moves: int = 0
    imageKey: str | None = None
    assessedAt: float | None = None
    incidentId: str | None = None
    reason: str | None = None
    memberTrackIds: list[int] = Field(default_factory=list)


class IncidentState(StrEnum):
    NEW = "new"
    UPDATE = "update"
    END = "end"


class Verdict(_Wire):
    """One LLM verdict kept with an incident."""

    taskId: str
    riskLevel: RiskLevel
    riskTypes: list[str] = Field(default_factory=list)
    description: str
    confidence: float
    llmModel: str
    apiKeyId: str
    at: float


class Incident(_Wire):
    """`incident` events (`state` new, update, end) and what the history keeps: one near miss or dangerous
    verdict, from its start to its end, with its worst metrics and every verdict. The same payload goes to
    WebSocket clients (and, later, MQTT and webhooks)."""

    incidentId: str
    cameraId: str
    state: IncidentState
    severity: Severity
    openedBy: Literal["near_miss", "verdict"]
    startedAt: float
    updatedAt: float
    endedAt: float | None = None
    groupId: str | None = None
    zones: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)
    trackIds: list[int] = Field(default_factory=list)
    conflictType: ConflictType | None = None
    metrics: ConflictFacts | None = None  # the worst moment (lowest TTC, else lowest PET, else closest)
    verdicts: list[Verdict] = Field(default_factory=list)
    snapshotUrl: str | None = None
    clipUrl: str | None = None


class KeyState(TypedDict):
    """One key's shared state as the limiter reads it from Redis (never its secret)."""

    state: Literal["ready", "cooling", "disabled", "off"]
    disabledReason: str | None
    cooldownLeft: float
    inFlight: int
    calls: int
    successes: int
    rateLimited: int
    failures: int
    cooldowns: int
