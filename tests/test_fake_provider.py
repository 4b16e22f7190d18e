"""The fake provider rejects what the real API rejects and limits each key, over real HTTP."""

from __future__ import annotations

import base64
import threading
import time

import pytest
import requests

from traffic_celery.fake_provider import ProviderServer, ProviderState
from traffic_celery.llm.schema import LLMReply, build_messages
from traffic_celery.vision.types import GroupFeatures

JPEG = base64.b64decode("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAP//////////////////////////////////////////////////////"
                        "////////////////////////////////wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAAA//EABQQAQAA"
                        "AAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AN//Z")
FEATURES = GroupFeatures(2, {"car": 1, "person": 1}, 0.5, 0.5)
SECRET_A, SECRET_SLOW = "sk-provider-test-aaaa", "sk-provider-test-slow"


@pytest.fixture(scope="module")
def server():
    state = ProviderState({SECRET_A: ("a", 1000), SECRET_SLOW: ("slow", 2)}, latency=0.0)
    srv = ProviderServer(("127.0.0.1", 0), state)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(server, body=None, secret=SECRET_A, raw=None):
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    if raw is not None:
        return requests.post(server.url + "/chat/completions", data=raw, headers=headers, timeout=5)
    return requests.post(server.url + "/chat/completions", json=body, headers=headers, timeout=5)


def good_body(**over):
    return {"model": "qwen-vl-plus", "messages": build_messages(1, [3, 4], FEATURES, JPEG), **over}


def test_valid_request_gets_a_schema_reply(server):
    resp = post(server, good_body())
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["object"] == "chat.completion" and doc["model"] == "qwen-vl-plus"
    reply = LLMReply.model_validate_json(doc["choices"][0]["message"]["content"])
    assert reply.results[0].groupIndex == 1 and reply.maxRiskLevel == "medium"
    assert doc["usage"]["total_tokens"] > 0
    # deterministic: the same request gives the same answer
    assert post(server, good_body()).json()["choices"][0]["message"]["content"] == \
        doc["choices"][0]["message"]["content"]


def text_only():
    return [{"role": "user", "content": "hello"}]


def bad_image(url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize("secret, body, raw, status, code", [
    (None, good_body(), None, 401, "missing_api_key"),
    ("sk-wrong-key-zzzz", good_body(), None, 401, "invalid_api_key"),
    (SECRET_A, None, b"{broken", 400, "invalid_json"),
    (SECRET_A, {"messages": text_only()}, None, 400, "missing_model"),
    (SECRET_A, good_body(model="gpt-nonexistent"), None, 404, "model_not_found"),
    (SECRET_A, good_body(messages=[]), None, 400, "invalid_messages"),
    (SECRET_A, good_body(messages=text_only()), None, 400, "missing_image"),
    (SECRET_A, good_body(messages=bad_image("https://example.com/x.jpg")), None, 400, "invalid_image_url"),
    (SECRET_A, good_body(messages=bad_image("data:image/jpeg;base64,!!!")), None, 400, "invalid_image_format"),
    (SECRET_A, good_body(messages=bad_image("data:image/jpeg;base64,aGVsbG8=")), None, 400,
     "invalid_image_format"),
])
def test_rejects_what_the_real_api_rejects(server, secret, body, raw, status, code):
    resp = post(server, body, secret=secret, raw=raw)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == code and error["message"]
    assert "sk-wrong-key-zzzz" not in error["message"]  # never echo a key in full


def test_qps_limit_answers_429_with_retry_after(server):
    codes = [post(server, good_body(), secret=SECRET_SLOW) for _ in range(5)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    retry_after = float(limited[0].headers["Retry-After"])
    assert 0 < retry_after <= 1.0
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"
    time.sleep(retry_after)  # honouring the provider's own Retry-After is the behaviour under test
    assert post(server, good_body(), secret=SECRET_SLOW).status_code == 200
    stats = requests.get(server.url.removesuffix("/v1") + "/stats", timeout=5).json()
    assert stats["keys"]["slow"]["rateLimited"] == len(limited)
    assert SECRET_SLOW not in str(stats)
