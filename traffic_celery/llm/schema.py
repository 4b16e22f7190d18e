"""The LLM reply schema, the prompt that asks for it and the parser that validates it.

One schema (`SCHEMA_TEXT`) serves all three and the fake provider too, so the parser can never read a different shape
from the one the prompt asked for (defect 4 of the old system). A reply that does not follow it is rejected with
a :class:`ReplyError` naming the fault; it is never read as risk "none".

The one reply read as "none" without a result is the explicit "no danger" answer
`{"hasDangerousDriving": false, "maxRiskLevel": "none", "results": []}`: all three fields present and saying the
same thing. :func:`parse_reply` turns it into :data:`NO_DANGER` for the group asked about (riskLevel "none",
confidence 1.0 because the model stated it without hedging, no risk types, no trigger ids, description
"no danger seen"), so a clear answer costs one call instead of retries and a dead letter.

A reply that contradicts itself is rejected (:class:`ReplyError`, "contradicts itself"), exactly these cases:

- `hasDangerousDriving` true while `maxRiskLevel` is "none" (danger claimed at no risk);
- `results` empty while `maxRiskLevel` is not "none" or `hasDangerousDriving` is true (a risk with no group);
- a result's `riskLevel` above `maxRiskLevel`, or `maxRiskLevel` above every result's `riskLevel`: `maxRiskLevel`
  must be the highest `riskLevel` of the results.

Accepted on purpose: `hasDangerousDriving` false with any `maxRiskLevel` (the schema does not say from which
level a risk counts as dangerous *driving*, and only the group's `riskLevel` is used), and results for groups
other than the one asked about, beside it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from traffic_celery.vision.types import GroupFeatures

RiskLevel = Literal["none", "low", "medium", "high"]
RISK_ORDER = {"none": 0, "low": 1, "medium": 2, "high": 3}


class GroupResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    groupIndex: int
    riskLevel: RiskLevel
    confidence: float = Field(ge=0, le=1)
    riskTypes: list[str]
    description: str
    dangerObjectCount: int = Field(ge=0)
    triggerObjectIds: list[int]


class LLMReply(BaseModel):
    """`{"hasDangerousDriving", "maxRiskLevel", "results": [...]}` exactly as the prompt states it."""

    model_config = ConfigDict(extra="ignore")

    hasDangerousDriving: bool
    maxRiskLevel: RiskLevel
    results: list[GroupResult]  # empty only in the "no danger" answer (see the module docstring)


class ReplyError(ValueError):
    """The LLM's reply cannot be used; the message says why in one line."""


NO_DANGER_CONFIDENCE = 1.0  # the "no danger" answer states no confidence; it is an unhedged statement
NO_DANGER_DESCRIPTION = "no danger seen"


def no_danger(group_index: int) -> GroupResult:
    """What the "no danger" answer (`results: []`, `maxRiskLevel: "none"`) says about group `group_index`."""
    return GroupResult(groupIndex=group_index, riskLevel="none", confidence=NO_DANGER_CONFIDENCE, riskTypes=[],
                       description=NO_DANGER_DESCRIPTION, dangerObjectCount=0, triggerObjectIds=[])


def contradiction(reply: LLMReply) -> str | None:
    """Why `reply` contradicts itself (the cases listed in the module docstring), or None if it does not."""
    if reply.hasDangerousDriving and reply.maxRiskLevel == "none":
        return "hasDangerousDriving is true but maxRiskLevel is none"
    if not reply.results:
        if reply.maxRiskLevel != "none":
            return f"maxRiskLevel is {reply.maxRiskLevel} but results is empty"
        return None
    highest = max(reply.results, key=lambda res: RISK_ORDER[res.riskLevel])
    if RISK_ORDER[highest.riskLevel] > RISK_ORDER[reply.maxRiskLevel]:
        return (f"groupIndex {highest.groupIndex} has riskLevel {highest.riskLevel}, above maxRiskLevel "
                f"{reply.maxRiskLevel}")
    if RISK_ORDER[highest.riskLevel] < RISK_ORDER[reply.maxRiskLevel]:
        return f"maxRiskLevel is {reply.maxRiskLevel} but no result has a riskLevel above {highest.riskLevel}"
    return None


SCHEMA_TEXT = (
    '{"hasDangerousDriving": bool, "maxRiskLevel": "none|low|medium|high", "results": [{"groupIndex": int, '
    '"riskLevel": "none|low|medium|high", "confidence": 0..1, "riskTypes": [str], "description": str, '
    '"dangerObjectCount": int, "triggerObjectIds": [int]}]}'
)

SYSTEM_PROMPT = (
    "You are a traffic-safety analyst watching a road camera. You receive the crop of one traffic group and the "
    "facts measured by the detector. Judge whether the road users are in danger (near collision, a pedestrian in "
    "a vehicle's path, dangerous driving). Answer with JSON only, no prose, in exactly this schema: " + SCHEMA_TEXT
)

# The facts line is machine-readable on purpose: a real model reads it as text, the fake provider parses it.
FACTS_RE = re.compile(r"^FACTS group=(?P<group>\d+) (?P<json>\{.*\})$", re.MULTILINE)


def conflict_text(conflict: dict[str, Any]) -> str:
    """The near-miss metrics of the group's worst pair in words: metres and km/h on a calibrated camera."""
    metric = conflict.get("units") == "metric"
    distance, speed = ("m", "km/h") if metric else ("object heights", "object heights/s")
    parts = [f"its closest pair ({conflict['conflictType']}, objects {conflict['trackIds']}) is "
             f"{conflict['distance']:.1f} {distance} apart (closest so far {conflict['minDistance']:.1f} {distance})"]
    if conflict.get("relativeSpeed") is not None:
        parts.append(f"closing at {conflict['relativeSpeed']:.1f} {speed}")
    if conflict.get("ttc") is not None:
        parts.append(f"time to collision {conflict['ttc']:.1f} s")
    if conflict.get("pet") is not None:
        parts.append(f"post-encroachment time {conflict['pet']:.1f} s")
    speeds = conflict.get("speeds") or {}
    if metric and speeds:
        parts.append("speeds " + ", ".join(f"#{tid} {v:.0f} km/h" for tid, v in speeds.items()))
    return "; ".join(parts) + "."


def build_user_text(group_index: int, member_ids: list[int], features: GroupFeatures | dict[str, Any],
                    context: str | None = None) -> str:
    """The text part of the user message: the camera's context, what the detector measured (in a sentence, with
    the near-miss metrics in metres and seconds when the camera is calibrated) and the same as one FACTS line."""
    facts = features.to_dict() if isinstance(features, GroupFeatures) else dict(features)
    facts["objectIds"] = list(member_ids)
    counts = ", ".join(f"{n} {cls}" for cls, n in facts["classCounts"].items())
    pv = facts.get("pedestrianVehicleGap")
    pv_text = "no pedestrian next to a vehicle" if pv is None else \
        f"the closest pedestrian is {pv:.2f} object heights from a vehicle"
    where = f"Camera context: {context.strip()}.\n" if context else ""
    zones = f" It is in: {', '.join(facts['zones'])}." if facts.get("zones") else ""
    conflict = f" Near-miss metrics: {conflict_text(facts['conflict'])}" if facts.get("conflict") else ""
    return (f"{where}Traffic group {group_index}: {facts['objectCount']} objects ({counts}); the smallest gap between "
            f"two of them is {facts['minGap']:.2f} object heights; {pv_text}. Object ids: {member_ids}.{zones}"
            f"{conflict}\n"
            f"FACTS group={group_index} {json.dumps(facts, sort_keys=True)}\n"
            f"Return the JSON for groupIndex {group_index}.")


def image_data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def build_messages(group_index: int, member_ids: list[int], features: GroupFeatures | dict[str, Any],
                   jpeg: bytes, context: str | None = None) -> list[dict[str, Any]]:
    """OpenAI chat-completions messages with the crop as a data-URI image part."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_uri(jpeg)}},
            {"type": "text", "text": build_user_text(group_index, member_ids, features, context)},
        ]},
    ]


def extract_json(text: str) -> Any:
    """The first JSON object in `text`, tolerating code fences and prose around it."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyError("LLM reply is empty; check the model name and that it supports images")
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ReplyError(f"LLM reply holds no JSON object: {text[:80]!r}")


def parse_reply(text: str, group_index: int | None = None) -> GroupResult:
    """Validate the reply against the schema and return the result for `group_index` (or the only one).

    The "no danger" answer (empty `results`) gives :func:`no_danger` for `group_index` (0 if None); a reply that
    contradicts itself raises :class:`ReplyError` (see the module docstring)."""
    obj = extract_json(text)
    try:
        reply = LLMReply.model_validate(obj)
    except ValidationError as exc:
        faults = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:4])
        raise ReplyError(f"LLM reply does not follow the schema ({faults})") from None
    why = contradiction(reply)
    if why is not None:
        raise ReplyError(f"LLM reply contradicts itself ({why})")
    if not reply.results:
        return no_danger(0 if group_index is None else group_index)
    if group_index is not None:
        for result in reply.results:
            if result.groupIndex == group_index:
                return result
        if len(reply.results) != 1:
            raise ReplyError(f"LLM reply has no result for groupIndex {group_index}")
    return reply.results[0]
