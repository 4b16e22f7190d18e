"""The camera registry in Redis: which cameras run, on which URL, which capture node holds each, and its status.

- `tc:cameras` (hash) maps a camera id to its :class:`CameraConfig`. The web tier writes it; it outlives every
  process, so a restarted web tier or capture node starts the cameras again.
- `tc:camera:<id>:owner` is a lease: the id of the capture node running the camera, with a TTL the node renews
  every heartbeat. A node that dies stops renewing; another node claims the camera when the lease expires.
- `tc:camera:<id>:status` (hash) is the camera's last state (online / reconnecting / offline), message, node and
  counters, so a viewer who subscribes late, and `/api/cameras`, see it without waiting for the next event.
- `tc:cameras:control` (pub/sub) wakes every capture node when the registry changes.
- `tc:capture:nodes` (sorted set) holds the live capture nodes, each scored with the time its heartbeat expires
  (Redis's clock), so the nodes share the cameras fairly (:meth:`CameraRegistry.heartbeat`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from traffic_celery import names
from traffic_celery.protocol import CameraState, CameraStatus, EventType, StreamStopped, encode
from traffic_celery.safety.calibration import Calibration
from traffic_celery.safety.zones import Zone, ZoneSet

logger = logging.getLogger(__name__)


STOPPED_BY_OPERATOR = "stopped by an operator"


CAS_ATTEMPTS = 20


class RegistryConflict(RuntimeError):
    """A camera kept changing while a write was computed; the caller may try again."""


class CameraConfig(BaseModel):
    """One camera as the registry keeps it."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    camera_id: str = Field(alias="cameraId")
    url: str
    frame_interval: float | None = Field(None, alias="frameInterval", gt=0, le=60)
    enabled: bool = True  # false: registered but stopped (by an operator, or because its source is over)
    verified: bool = False  # the source has opened once: later open failures are retried, not final
    added_at: float = Field(default_factory=time.time, alias="addedAt")
    # the safety layer: changed live, without restarting the camera's loop
    zones: list[Zone] = Field(default_factory=list)  # zones and masks (kind), normalised image coordinates
    calibration: Calibration | None = None  # to the ground plane; None: metrics stay in relative units
    context: str | None = Field(default=None, max_length=300)  # told to the LLM: "school crossing, limit 30 km/h"
    detector: Literal["yolo", "colour"] = "yolo"  # colour: the synthetic scene's road users (safety.synthetic)
    imgsz: int | None = Field(default=None, ge=32, le=4096)  # detector input (longer side); None: TC_YOLO_IMGSZ

    @field_validator("zones")
    @classmethod
    def _unique_zone_names(cls, zones: list[Zone]) -> list[Zone]:
        ZoneSet(zones)  # ValueError on repeated names
        return zones

    def same_source(self, other: CameraConfig) -> bool:
        return self.url == other.url and self.frame_interval == other.frame_interval \
            and self.detector == other.detector

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


# KEYS: owner keys; ARGV[1]: node id, ARGV[2]: ttl ms. Per key 1 if this node holds it now (renewed, or taken
# again when the key vanished, e.g. after a Redis restart), 0 if another node holds it.
_RENEW = """
local held = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2]); held[i] = 1
  elseif owner == false then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2]); held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""

# KEYS: registry, status, events channel; ARGV: camera id, state, message, node, time, event. 0 if not running.
_SET_STATUS = """
local config = redis.call('HGET', KEYS[1], ARGV[1])
if not config or cjson.decode(config)['enabled'] == false then return 0 end
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'message', ARGV[3], 'node', ARGV[4], 'since', ARGV[5])
redis.call('PUBLISH', KEYS[3], ARGV[6])
return 1
"""

# KEYS: registry; ARGV: camera id, the entry as it was read ('' = absent), the new entry. 1 if written.
_CAS = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: live nodes; ARGV[1]: node id, ARGV[2]: ttl ms. The number of live nodes, this one included.
_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZCARD', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CameraRegistry:
    def __init__(self, r: redis.Redis):
        self._redis = r
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)
        self._set_status = r.register_script(_SET_STATUS)
        self._cas = r.register_script(_CAS)
        self._heartbeat = r.register_script(_HEARTBEAT)

    # --- configs (the web tier) -------------------------------------------------------------------------------
    def update(self, camera_id: str, change: Callable[[CameraConfig | None], CameraConfig | None],
               stopped_message: str | None = STOPPED_BY_OPERATOR,
               notify: bool = True) -> tuple[CameraConfig | None, CameraConfig | None]:
        """Change one camera atomically: `change` gets the current config (None if unregistered) and returns the
        new one, or None to leave it as it is. The write happens only if nobody wrote the camera since it was
        read (compare-and-set in Lua); otherwise `change` runs again on the fresh config. So a late writer (a
        capture node marking an old URL verified, a PATCH computed from an old read) can never write an old
        config back over an operator's change. Returns (previous, current).

        A running camera that this stops is recorded `stopped` and its viewers get `stream_stopped`, whether or
        not a node runs it now (`stopped_message` None: its last status, a failure's, stays and nothing is
        announced). `notify` wakes the capture nodes."""
        for _attempt in range(CAS_ATTEMPTS):
            raw = self._redis.hget(names.CAMERAS, camera_id)
            previous = None if raw is None else CameraConfig.model_validate_json(raw)
            config = change(previous)
            if config is None or config == previous:
                return previous, previous
            if not self._cas(keys=[names.CAMERAS], args=[camera_id, raw or b"", config.to_json()]):
                continue  # written meanwhile: decide again on what is there now
            pipe = self._redis.pipeline()
            if previous is not None and previous.enabled and not config.enabled and stopped_message is not None:
                self._announce_stop(pipe, camera_id, stopped_message, status=True)
            if notify:
                pipe.publish(names.CAMERAS_CONTROL, "changed")
            pipe.execute()
            return previous, config
        raise RegistryConflict(f"camera {camera_id} changed {CAS_ATTEMPTS} times while it was being written; "
                               "try again")

    @staticmethod
    def _announce_stop(pipe: Any, camera_id: str, reason: str, status: bool) -> None:
        if status:
            pipe.hset(names.status_key(camera_id), mapping={"state": CameraState.STOPPED.value, "message": reason,
                                                            "since": time.time()})
        pipe.publish(names.events_channel(camera_id),
                     encode(EventType.STREAM_STOPPED, StreamStopped(cameraId=camera_id, reason=reason)))

    def add(self, config: CameraConfig) -> bool:
        """Register a new camera; False (and nothing written) if the id is taken, even by a concurrent add."""
        if not self._redis.hsetnx(names.CAMERAS, config.camera_id, config.to_json()):
            return False
        self.notify()
        return True

    def put(self, config: CameraConfig) -> CameraConfig | None:
        """Register (or change) a camera; returns the previous config. Same source and state: kept as it was
        (a camera that worked stays `verified`)."""
        def change(current: CameraConfig | None) -> CameraConfig | None:
            if current is not None and current.same_source(config):
                return None if current.enabled == config.enabled else \
                    current.model_copy(update={"enabled": config.enabled})
            return config

        return self.update(config.camera_id, change)[0]

    def set_enabled(self, camera_id: str, enabled: bool,
                    stopped_message: str | None = STOPPED_BY_OPERATOR) -> CameraConfig | None:
        """Start or stop a registered camera; returns its config as it was, None if it is not registered."""
        return self.update(camera_id, lambda current: None if current is None or current.enabled == enabled
                           else current.model_copy(update={"enabled": enabled}), stopped_message)[0]

    def remove(self, camera_id: str, reason: str = "removed by an operator") -> bool:
        """Remove a camera (False if it was not registered); its viewers get `stream_stopped` with `reason`."""
        if not self._redis.hdel(names.CAMERAS, camera_id):
            return False
        pipe = self._redis.pipeline()
        self._announce_stop(pipe, camera_id, reason, status=False)
        pipe.publish(names.CAMERAS_CONTROL, "changed")
        pipe.execute()
        return True

    def count(self) -> int:
        return int(self._redis.hlen(names.CAMERAS))

    def disable_if(self, config: CameraConfig) -> bool:
        """Stop the camera only if it still has this source (an operator may have changed it meanwhile)."""
        _previous, current = self.update(
            config.camera_id, lambda now: now.model_copy(update={"enabled": False})
            if now is not None and now.enabled and now.same_source(config) else None, stopped_message=None)
        return current is not None and not current.enabled and current.same_source(config)

    def mark_verified(self, config: CameraConfig) -> None:
        """Record that the camera's source opened once, unless its source changed meanwhile."""
        self.update(config.camera_id, lambda now: now.model_copy(update={"verified": True})
                    if now is not None and now.same_source(config) and not now.verified else None, notify=False)

    def get(self, camera_id: str) -> CameraConfig | None:
        raw = self._redis.hget(names.CAMERAS, camera_id)
        return None if raw is None else CameraConfig.model_validate_json(raw)

    def all(self) -> dict[str, CameraConfig]:
        configs = {}
        for cid, raw in cast("dict[bytes, bytes]", self._redis.hgetall(names.CAMERAS)).items():
            try:
                configs[cid.decode()] = CameraConfig.model_validate_json(raw)
            except ValueError:
                logger.warning("ignoring a malformed registry entry for camera %r", cid)
        return configs

    def notify(self) -> None:
        self._redis.publish(names.CAMERAS_CONTROL, "changed")

    # --- leases (the capture nodes) ---------------------------------------------------------------------------
    def claim(self, camera_id: str, node: str, ttl: float) -> bool:
        return bool(self._redis.set(names.owner_key(camera_id), node, nx=True, px=int(ttl * 1000)))

    def renew(self, camera_ids: Sequence[str], node: str, ttl: float) -> dict[str, bool]:
        if not camera_ids:
            return {}
        held = self._renew(keys=[names.owner_key(c) for c in camera_ids], args=[node, int(ttl * 1000)])
        return {cid: bool(h) for cid, h in zip(camera_ids, held, strict=True)}  # one answer per key

    def release(self, camera_id: str, node: str) -> None:
        self._release(keys=[names.owner_key(camera_id)], args=[node])

    def heartbeat(self, node: str, ttl: float) -> int:
        """Say that capture node `node` is alive for `ttl` seconds; returns how many nodes are alive (it included)."""
        return int(self._heartbeat(keys=[names.CAPTURE_NODES], args=[node, int(ttl * 1000)]))

    def node_gone(self, node: str) -> None:
        """A capture node that stops: the others count it out at once instead of after its heartbeat's ttl."""
        self._redis.zrem(names.CAPTURE_NODES, node)

    # --- status ---------------------------------------------------------------------------------------------
    def set_status(self, camera_id: str, state: CameraState, message: str, node: str) -> bool:
        """Record the camera's state and tell its viewers (`camera_status`, status 1 only when online), unless the
        camera was stopped or removed meanwhile (a loop being stopped must not write over "stopped")."""
        return bool(self._set_status(
            keys=[names.CAMERAS, names.status_key(camera_id), names.events_channel(camera_id)],
            args=[camera_id, state, message, node, time.time(),
                  encode(EventType.CAMERA_STATUS, CameraStatus.of(camera_id, state, message))]))

    def set_counters(self, counters: dict[str, dict[str, Any]]) -> None:
        if not counters:
            return
        pipe = self._redis.pipeline(transaction=False)
        for camera_id, values in counters.items():
            pipe.hset(names.status_key(camera_id), mapping={k: json.dumps(v) for k, v in values.items()})
        pipe.execute()

    def describe(self, camera_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Registered cameras (all, or those of `camera_ids` that exist) with owner and last status, for the API."""
        if camera_ids is None:
            configs = self.all()
        else:  # one camera (after each REST call): no need to read and parse the whole registry
            configs = {c: config for c in camera_ids if (config := self.get(c)) is not None}
        ids = sorted(configs) if camera_ids is None else list(configs)
        pipe = self._redis.pipeline(transaction=False)
        for cid in ids:
            pipe.get(names.owner_key(cid))
            pipe.hgetall(names.status_key(cid))
        replies = pipe.execute() if ids else []
        cameras = []
        for i, cid in enumerate(ids):
            owner, status = replies[2 * i], {k.decode(): v.decode() for k, v in replies[2 * i + 1].items()}
            config = configs[cid]
            default_state = CameraState.STARTING if config.enabled else CameraState.STOPPED
            entry: dict[str, Any] = {"cameraId": cid, "url": config.url, "frameInterval": config.frame_interval,
                                     "enabled": config.enabled, "node": owner.decode() if owner else None,
                                     "state": status.get("state", default_state),
                                     "message": status.get("message", ""),
                                     "zones": [z.model_dump(mode="json") for z in config.zones],
                                     "calibration": config.calibration.model_dump(mode="json")
                                     if config.calibration else None,
                                     "calibrated": config.calibration is not None, "context": config.context,
                                     "detector": config.detector, "imgsz": config.imgsz}
            for key in ("framesAnalysed", "tasksEnqueued", "reconnects"):
                if key in status:
                    entry[key] = json.loads(status[key])
            cameras.append(entry)
        return cameras

    def status(self, camera_id: str) -> dict[str, str]:
        status = cast("dict[bytes, bytes]", self._redis.hgetall(names.status_key(camera_id)))
        return {k.decode(): v.decode() for k, v in status.items()}

    def forget_status(self, camera_id: str) -> None:
        self._redis.delete(names.status_key(camera_id))
