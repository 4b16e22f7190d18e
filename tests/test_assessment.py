"""The reply parser accepts the project's reply schema, in prose or fences, and rejects everything else clearly."""

from __future__ import annotations

import json
import re

import pytest

from traffic_celery.fake_provider import assess_from_facts
from traffic_celery.llm.schema import (
    GroupResult,
    ReplyError,
    build_messages,
    build_user_text,
    parse_reply,
)
from traffic_celery.vision.types import GroupFeatures

GOOD = {"hasDangerousDriving": True, "maxRiskLevel": "high", "results": [
    {"groupIndex": 0, "riskLevel": "low", "confidence": 0.4, "riskTypes": [], "description": "calm",
     "dangerObjectCount": 0, "triggerObjectIds": []},
    {"groupIndex": 2, "riskLevel": "high", "confidence": 0.9, "riskTypes": ["pedestrian_vehicle_conflict"],
     "description": "pedestrian in front of the car", "dangerObjectCount": 2, "triggerObjectIds": [3, 7]}]}


def test_plain_reply():
    result = parse_reply(json.dumps(GOOD), group_index=2)
    assert (result.riskLevel, result.triggerObjectIds, result.confidence) == ("high", [3, 7], 0.9)


def test_reply_wrapped_in_prose_and_fences():
    text = "Sure! Here is my assessment:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nStay safe {ok}."
    assert parse_reply(text, group_index=0).description == "calm"


def test_reply_missing_fields_is_rejected_with_the_field_named():
    broken = json.loads(json.dumps(GOOD))
    del broken["results"][1]["riskLevel"]
    with pytest.raises(ReplyError, match=r"results\.1\.riskLevel: Field required"):
        parse_reply(json.dumps(broken), group_index=2)


@pytest.mark.parametrize("reply", [
    {"risk_level": "high", "groups": [{"id": 0, "level": "high"}]},          # the old system's other schema
    {"hasDangerousDriving": False, "maxRiskLevel": "none"},                    # no results at all
    {"maxRiskLevel": "none", "results": []},                                   # "no danger" missing a field
    {"hasDangerousDriving": False, "results": []},                             # ... and the other one
    {"hasDangerousDriving": False, "maxRiskLevel": "none", "results": None},   # results not a list
    {"hasDangerousDriving": True, "maxRiskLevel": "severe", "results": GOOD["results"]},  # unknown level
])
def test_wrong_schema_is_rejected_not_read_as_none(reply):
    with pytest.raises(ReplyError, match="does not follow the schema"):
        parse_reply(json.dumps(reply))


NO_DANGER = {"hasDangerousDriving": False, "maxRiskLevel": "none", "results": []}


@pytest.mark.parametrize("group_index, expected_index", [(4, 4), (0, 0), (None, 0)])
def test_the_no_danger_answer_is_risk_none_for_the_group_asked_about(group_index, expected_index):
    result = parse_reply("No danger here:\n```json\n" + json.dumps(NO_DANGER) + "\n```", group_index=group_index)
    assert result == GroupResult(groupIndex=expected_index, riskLevel="none", confidence=1.0, riskTypes=[],
                                 description="no danger seen", dangerObjectCount=0, triggerObjectIds=[])


LOW = {"groupIndex": 0, "riskLevel": "low", "confidence": 0.4, "riskTypes": [], "description": "calm",
       "dangerObjectCount": 0, "triggerObjectIds": []}
NONE = {**LOW, "riskLevel": "none"}


@pytest.mark.parametrize("reply, why", [
    ({"hasDangerousDriving": True, "maxRiskLevel": "none", "results": []},
     "hasDangerousDriving is true but maxRiskLevel is none"),
    ({"hasDangerousDriving": True, "maxRiskLevel": "none", "results": [NONE]},
     "hasDangerousDriving is true but maxRiskLevel is none"),
    ({"hasDangerousDriving": False, "maxRiskLevel": "low", "results": []}, "maxRiskLevel is low but results is empty"),
    ({"hasDangerousDriving": True, "maxRiskLevel": "high", "results": []},
     "maxRiskLevel is high but results is empty"),
    ({"hasDangerousDriving": True, "maxRiskLevel": "medium", "results": GOOD["results"]},
     "groupIndex 2 has riskLevel high, above maxRiskLevel medium"),
    ({"hasDangerousDriving": False, "maxRiskLevel": "none", "results": [LOW]},
     "groupIndex 0 has riskLevel low, above maxRiskLevel none"),
    ({"hasDangerousDriving": True, "maxRiskLevel": "high", "results": [LOW]},
     "maxRiskLevel is high but no result has a riskLevel above low"),
])
def test_a_reply_that_contradicts_itself_is_rejected(reply, why):
    with pytest.raises(ReplyError, match=re.escape(f"LLM reply contradicts itself ({why})")):
        parse_reply(json.dumps(reply), group_index=0)


def test_what_is_not_a_contradiction_is_accepted():
    # hasDangerousDriving false at a high risk: the schema does not say from which level driving is dangerous
    calm_high = {"hasDangerousDriving": False, "maxRiskLevel": "high", "results": GOOD["results"]}
    assert parse_reply(json.dumps(calm_high), group_index=2).riskLevel == "high"
    # a "none" result under a "none" maximum, and danger-free results are not the empty answer
    assert parse_reply(json.dumps({**NO_DANGER, "results": [NONE]}), group_index=0).description == "calm"


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("I cannot help with that.", "no JSON object"), ("[1, 2, 3]", "no JSON object")])
def test_no_json_is_rejected(text, message):
    with pytest.raises(ReplyError, match=message):
        parse_reply(text)


def test_group_index_not_in_reply():
    with pytest.raises(ReplyError, match="no result for groupIndex 5"):
        parse_reply(json.dumps(GOOD), group_index=5)


def test_prompt_carries_image_and_facts_and_the_provider_reads_them():
    features = GroupFeatures(object_count=2, class_counts={"car": 1, "person": 1}, min_gap=0.1,
                             pedestrian_vehicle_gap=0.1)
    messages = build_messages(3, [4, 9], features, b"\xff\xd8\xff\xe0fakejpeg")
    content = messages[1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
    assert "groupIndex" in messages[0]["content"] and "maxRiskLevel" in messages[0]["content"]
    reply = assess_from_facts(content[1]["text"])
    assert reply.results[0].groupIndex == 3
    assert reply.results[0].riskLevel == "high"
    assert reply.results[0].triggerObjectIds == [4, 9]
    # The parser reads what the provider wrote: one schema for both.
    assert parse_reply(reply.model_dump_json(), group_index=3).riskLevel == "high"


@pytest.mark.parametrize("pv, gap, counts, level", [
    (None, 0.5, {"person": 3}, "none"),
    (2.0, 0.5, {"person": 1, "car": 1}, "low"),
    (0.5, 0.5, {"person": 1, "car": 1}, "medium"),
    (0.1, 0.1, {"person": 1, "car": 1}, "high"),
    (None, 0.05, {"car": 1, "truck": 1}, "medium"),
])
def test_fake_provider_rule(pv, gap, counts, level):
    features = GroupFeatures(sum(counts.values()), counts, gap, pv)
    assert assess_from_facts(build_user_text(0, [1, 2], features)).maxRiskLevel == level
