"""A local stand-in for DashScope/OpenAI: `POST /v1/chat/completions` over real HTTP.

Faithful where it matters to the system: Bearer auth against a set of keys (401 otherwise), strict per-key QPS and
RPM limits (sliding windows of 1 s and 60 s over the requests it accepted) answered with 429 and `Retry-After`, a
latency distribution, injectable faults (500s, malformed JSON, a revoked key answering 401), OpenAI-shaped errors
for what the real API rejects (malformed JSON, no model or messages, unknown model, no image, a broken data URI, an
oversized body), and a reply in the project's reply schema (`llm.schema`) computed deterministically from the FACTS
line of the prompt, so tests can predict it (with `bare_none`, a "none" verdict comes as the bare "no danger" answer
with empty `results`, as some models give it). `GET /stats` gives the counts (requests, 200s, 429s, the most
requests seen in one sliding second and minute, per key id), `GET /log` every admitted/refused request (time, key
id, status); keys are never shown in full.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from traffic_celery.llm.keys import mask
from traffic_celery.llm.schema import FACTS_RE, RISK_ORDER, GroupResult, LLMReply
from traffic_celery.protocol import RiskLevel

logger = logging.getLogger(__name__)

MAX_BODY = 20 * 1024 * 1024
# Kernel receive timestamps (struct timespec) on Linux; Python's socket module does not name the option.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
DEFAULT_MODELS = ("qwen-vl-plus", "qwen-vl-max", "qwen2.5-vl-72b-instruct", "gpt-4o", "gpt-4o-mini")
DATA_URI_RE = re.compile(r"^data:image/(jpeg|jpg|png|webp);base64,(.+)$", re.DOTALL)
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, err_type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.err_type = status, message, code, err_type
        self.headers = headers or {}


@dataclass
class KeyState:
    key_id: str
    qps: float
    rpm: float = float("inf")
    revoked: bool = False  # answers 401, like a key revoked at the provider
    second: deque[float] = field(default_factory=deque)  # monotonic times of accepted requests, last second
    minute: deque[float] = field(default_factory=deque)  # ... last minute
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    max_in_second: int = 0  # the most accepted requests ever seen in one sliding second
    max_in_minute: int = 0
    faults: int = 0


HANG_SECONDS = 600.0


@dataclass
class Faults:
    """Injected misbehaviour, drawn per accepted request from a seeded generator."""

    error_rate: float = 0.0  # 500 Internal Server Error
    malformed_rate: float = 0.0  # 200 with a reply that is not JSON
    wrong_schema_rate: float = 0.0  # 200 with JSON in another schema
    hang_rate: float = 0.0  # accept the request and never answer (until the client gives up)
    latency: float = 0.3  # seconds, the least a reply takes
    latency_jitter: float = 0.0  # plus uniform [0, jitter)
    seed: int | None = None
    retry_after: bool = True  # send Retry-After with a 429 (some providers do not)


class ProviderState:
    """Keys, limits, faults and counters, shared by the server's threads under one lock."""

    def __init__(self, keys: dict[str, tuple[str, float]], latency: float = 0.3,
                 models: tuple[str, ...] = DEFAULT_MODELS, rpm: dict[str, float] | None = None,
                 revoked: tuple[str, ...] = (), faults: Faults | None = None, bare_none: bool = False):
        """`keys`: secret -> (key id, QPS limit); `rpm`: key id -> RPM limit; `revoked`: key ids answering 401;
        `bare_none`: answer a "none" verdict as `{"hasDangerousDriving": false, "maxRiskLevel": "none",
        "results": []}`."""
        self.bare_none = bare_none
        rpm = rpm or {}
        self._keys = {secret: KeyState(key_id, qps, rpm.get(key_id, float("inf")), key_id in revoked)
                      for secret, (key_id, qps) in keys.items()}
        self.faults = faults or Faults(latency=latency)
        self.models = models
        self.lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        # (wall time, key id, status) of every authenticated request
        self.log: deque[tuple[float, str, int]] = deque(maxlen=100_000)

    @property
    def latency(self) -> float:
        return self.faults.latency

    def admit(self, secret: str, now: float | None = None) -> KeyState:
        """Count a request for the key; raise 401 for an unknown or revoked key, 429 when its QPS or RPM is
        spent (only accepted requests count toward the limits, as with real providers)."""
        state = self._keys.get(secret)
        if state is None or state.revoked:
            if state is not None:
                with self.lock:
                    state.requests += 1
                    self.log.append((time.time(), state.key_id, 401))
            raise ApiError(401, f"Incorrect API key provided: {mask(secret)}.", "invalid_api_key")
        now = time.time() if now is None else now
        with self.lock:
            state.requests += 1
            for window, span in ((state.second, 1.0), (state.minute, 60.0)):
                while window and now - window[0] >= span:
                    window.popleft()
            for window, span, limit, unit in ((state.second, 1.0, state.qps, "second"),
                                              (state.minute, 60.0, state.rpm, "minute")):
                if len(window) >= limit:
                    state.rate_limited += 1
                    wait = max(0.001, span - (now - window[0]))
                    self.log.append((now, state.key_id, 429))
                    headers = {"Retry-After": f"{wait:.3f}", "retry-after-ms": str(int(wait * 1000))} \
                        if self.faults.retry_after else {}
                    raise ApiError(429, f"Rate limit reached for key {state.key_id}: {limit:g} requests per "
                                        f"{unit}. Please retry after {wait:.3f}s.", "rate_limit_exceeded",
                                   "requests", headers)
            state.second.append(now)
            state.minute.append(now)
            self.log.append((now, state.key_id, 200))
            state.max_in_second = max(state.max_in_second, len(state.second))
            state.max_in_minute = max(state.max_in_minute, len(state.minute))
        return state

    def draw(self) -> tuple[float, str | None]:
        """This request's latency and injected fault (None, "error", "malformed", "wrong_schema" or "hang")."""
        f = self.faults
        with self.lock:
            latency = f.latency + (self._rng.uniform(0, f.latency_jitter) if f.latency_jitter else 0.0)
            roll = self._rng.random()
        edge = 0.0
        for fault, rate in (("error", f.error_rate), ("malformed", f.malformed_rate),
                            ("wrong_schema", f.wrong_schema_rate), ("hang", f.hang_rate)):
            edge += rate
            if roll < edge:
                return (HANG_SECONDS if fault == "hang" else latency), fault
        return latency, None

    def finished(self, state: KeyState, fault: str | None) -> None:
        with self.lock:
            if fault:
                state.faults += 1
            else:
                state.ok += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            keys = {s.key_id: {"masked": mask(secret), "qps": s.qps, "rpm": None if s.rpm == float("inf") else s.rpm,
                               "requests": s.requests, "ok": s.ok, "rateLimited": s.rate_limited,
                               "faults": s.faults, "maxInSecond": s.max_in_second,
                               "maxInMinute": s.max_in_minute, "revoked": s.revoked}
                    for secret, s in self._keys.items()}
        return {"keys": keys, "requests": sum(k["requests"] for k in keys.values()),
                "ok": sum(k["ok"] for k in keys.values()),
                "rateLimited": sum(k["rateLimited"] for k in keys.values()),
                "faults": sum(k["faults"] for k in keys.values())}


def _check_image(url: Any) -> None:
    if not isinstance(url, str):
        raise ApiError(400, "image_url.url must be a string", "invalid_image_url")
    if url.startswith(("http://", "https://")):
        raise ApiError(400, "This provider stand-in cannot download images; send a data URI", "invalid_image_url")
    match = DATA_URI_RE.match(url)
    if not match:
        raise ApiError(400, "Invalid image URL: expected data:image/<jpeg|png|webp>;base64,...", "invalid_image_url")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "Invalid base64 in the image data URI", "invalid_image_format") from None
    if not raw.startswith(IMAGE_MAGIC):
        raise ApiError(400, "The image data is not a JPEG, PNG or WebP image", "invalid_image_format")


def validate_request(body: Any, models: tuple[str, ...]) -> tuple[str, str]:
    """Reject what the real API rejects; return (model, the user text)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object", "invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", "missing_model")
    if model not in models:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", "invalid_messages")
    texts, images = [], 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}]: role must be system, user or assistant", "invalid_messages")
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list) or not content:
            raise ApiError(400, f"messages[{i}].content must be a string or a non-empty array", "invalid_messages")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                _check_image(part["image_url"].get("url"))
                images += 1
            else:
                raise ApiError(400, f"messages[{i}].content[{j}]: unsupported part", "invalid_messages")
    if images == 0:
        raise ApiError(400, "This vision model needs an image: no image_url part in the messages", "missing_image")
    return model, "\n".join(texts)


def _when(ttc: float | None, pet: float | None) -> str:
    return ", ".join(f"{name} {value:.1f} s" for name, value in (("TTC", ttc), ("PET", pet)) if value is not None)


def assess_from_facts(text: str) -> LLMReply:
    """The deterministic answer to a prompt: a rule over the FACTS line the project's prompt states. Near-miss
    metrics come first (TTC <= 1 s or PET <= 0.5 s: high; TTC <= 1.5 s or PET <= 1 s: medium, the project's default
    thresholds), then the gaps in object heights."""
    match = FACTS_RE.search(text)
    if not match:
        result = GroupResult(groupIndex=0, riskLevel="none", confidence=0.5, riskTypes=[],
                             description="No measured facts in the prompt.", dangerObjectCount=0,
                             triggerObjectIds=[])
        return LLMReply(hasDangerousDriving=False, maxRiskLevel="none", results=[result])
    group_index = int(match.group("group"))
    facts = json.loads(match.group("json"))
    ids = [int(i) for i in facts.get("objectIds", [])]
    counts = facts.get("classCounts", {})
    pv, gap = facts.get("pedestrianVehicleGap"), float(facts.get("minGap", 99))
    vehicles = sum(n for c, n in counts.items() if c != "person")
    level: RiskLevel
    conflict = facts.get("conflict") or {}
    ttc, pet = conflict.get("ttc"), conflict.get("pet")
    if (ttc is not None and ttc <= 1.0) or (pet is not None and pet <= 0.5):
        level, types, text_ = "high", ["near_miss"], \
            f"Near miss: {conflict.get('conflictType', 'two road users')} on a collision course ({_when(ttc, pet)})."
    elif (ttc is not None and ttc <= 1.5) or (pet is not None and pet <= 1.0):
        level, types, text_ = "medium", ["near_miss"], \
            f"Close call: {conflict.get('conflictType', 'two road users')} ({_when(ttc, pet)})."
    elif pv is not None and pv < 0.25:
        level, types, text_ = "high", ["pedestrian_vehicle_conflict"], "A pedestrian is right next to a vehicle."
    elif pv is not None and pv < 0.75:
        level, types, text_ = "medium", ["pedestrian_near_vehicle"], "A pedestrian is close to a vehicle."
    elif vehicles >= 2 and gap < 0.1:
        level, types, text_ = "medium", ["vehicle_proximity"], "Two vehicles are almost touching."
    elif pv is not None:
        level, types, text_ = "low", ["mixed_traffic"], "Pedestrians and vehicles share the scene at a distance."
    else:
        level, types, text_ = "none", [], "Road users keep a safe distance."
    danger = ids if RISK_ORDER[level] >= RISK_ORDER["medium"] else []
    result = GroupResult(groupIndex=group_index, riskLevel=level, confidence=0.6 + 0.1 * RISK_ORDER[level],
                         riskTypes=types, description=text_, dangerObjectCount=len(danger),
                         triggerObjectIds=danger)
    return LLMReply(hasDangerousDriving=RISK_ORDER[level] >= RISK_ORDER["medium"], maxRiskLevel=level,
                    results=[result])


NO_DANGER_ANSWER = {"hasDangerousDriving": False, "maxRiskLevel": "none", "results": []}


def answer(text: str, bare_none: bool = False) -> str:
    """The reply text: :func:`assess_from_facts` as JSON; with `bare_none`, a "none" verdict as the bare
    "no danger" answer (written as a model writes it, not through the parser's model)."""
    reply = assess_from_facts(text)
    if bare_none and reply.maxRiskLevel == "none":
        return json.dumps(NO_DANGER_ANSWER)
    return reply.model_dump_json()


class Handler(BaseHTTPRequestHandler):
    server: ProviderServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # route http.server's access log to logging
        logger.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, err: ApiError) -> None:
        self._send(err.status, {"error": {"message": err.message, "type": err.err_type, "param": None,
                                          "code": err.code}}, err.headers)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/stats":
            self._send(200, self.server.state.stats())
        elif self.path == "/log":
            with self.server.state.lock:
                entries = [{"t": t, "key": k, "status": st} for t, k, st in self.server.state.log]
            self._send(200, {"requests": entries})
        elif self.path in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                        for m in self.server.state.models]})
        elif self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(ApiError(404, f"Unknown path {self.path}", "not_found"))

    def setup(self) -> None:
        super().setup()
        self._accepted: float | None = self.server.accepted.pop(id(self.request), None)

    def handle_one_request(self) -> None:
        self.arrived = self._arrival()
        super().handle_one_request()

    def _arrival(self) -> float:
        """When the next request reached this socket, by the kernel's receive timestamp of its first bytes (a
        peek: they stay for the parser). A Python thread can start reading tens of milliseconds late on a busy
        machine, and a provider that stamped then would count calls into the wrong second. Falls back to the
        accept time, else to now."""
        try:
            data, ancillary, _flags, _addr = self.connection.recvmsg(1, 256, socket.MSG_PEEK)
        except (OSError, AttributeError):
            data, ancillary = b"", []
        fallback, self._accepted = self._accepted or time.time(), None
        for level, kind, payload in ancillary if data else []:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec: int
                nsec: int
                sec, nsec = struct.unpack("qq", payload[:16])
                return sec + nsec / 1e9
        return fallback

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                raise ApiError(413, f"Request body too large ({length} bytes > {MAX_BODY})", "request_too_large")
            raw = self.rfile.read(length)
            if self.path not in ("/v1/chat/completions", "/chat/completions"):
                raise ApiError(404, f"Unknown path {self.path}", "not_found")
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                raise ApiError(401, "You didn't provide an API key (Authorization: Bearer <key>).",
                               "missing_api_key")
            state = self.server.state
            key_state = state.admit(auth[7:].strip(), self.arrived)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "We could not parse the JSON body of your request.", "invalid_json") from None
            model, text = validate_request(body, state.models)
            latency, fault = state.draw()
            if latency:
                time.sleep(latency)  # the simulated inference time
            state.finished(key_state, fault)
            if fault == "error":
                raise ApiError(500, "The server had an error while processing your request.", "server_error",
                               "server_error")
            if fault == "hang":  # the client timed out long ago; answer nothing
                self.close_connection = True
                return
            reply = {"malformed": "I am sorry, I cannot assess this image.",
                     "wrong_schema": json.dumps({"risk": "maybe", "objects": [1, 2], "comment": "looks fine"}),
                     }.get(fault or "") or answer(text, state.bare_none)
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text) // 4 + 600, "completion_tokens": len(reply) // 4,
                          "total_tokens": len(text) // 4 + 600 + len(reply) // 4}})
        except ApiError as err:
            self._error(err)


class ProviderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: ProviderState):
        super().__init__(address, Handler)
        self.state = state
        self.accepted: dict[int, float] = {}  # id(connection socket) -> accept time

    def server_bind(self) -> None:
        if SO_TIMESTAMPNS is not None:  # accepted connections inherit kernel receive timestamps
            self.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        super().server_bind()

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        self.accepted[id(request)] = time.time()
        super().process_request(request, client_address)

    @property
    def url(self) -> str:
        host, port = cast("tuple[str, int]", self.server_address[:2])  # an AF_INET server: (host, port)
        return f"http://{host}:{port}/v1"
