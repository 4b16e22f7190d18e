"""Keys load from YAML or env and are never shown in full."""

from __future__ import annotations

import logging

import pytest

from traffic_celery.llm.keys import KeysError, load_keys, mask
from traffic_celery.logs import SecretFilter
from traffic_celery.settings import Settings


@pytest.mark.parametrize("secret, shown", [
    ("sk-1234567890abcdef", "sk-…cdef"), ("short", "…rt"), ("abc", "…")])
def test_mask(secret, shown):
    assert mask(secret) == shown


def test_env_form_named_and_bare():
    keys = load_keys(Settings(llm_api_keys="a=sk-aaaaaaaaaaaa1111, sk-bbbbbbbbbbbb2222"))
    assert [(k.id, k.masked) for k in keys] == [("a", "sk-…1111"), ("key-2", "sk-…2222")]
    assert "aaaaaaaa" not in repr(keys[0]) and "aaaaaaaa" not in str(keys[0])


def test_yaml_with_defaults_and_secret_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-from-env-99999999")
    path = tmp_path / "keys.yaml"
    path.write_text("defaults: {qps: 3, model: qwen-vl-max}\n"
                    "keys:\n  - {id: k1, secret_env: MY_KEY}\n  - {id: k2, secret: sk-inline-88888888, qps: 9,"
                    " enabled: false}\n")
    k1, k2 = load_keys(Settings(llm_keys_file=path))
    assert (k1.secret, k1.qps, k1.model, k1.queue) == ("sk-from-env-99999999", 3, "qwen-vl-max", "llm.k1")
    assert (k2.qps, k2.enabled) == (9, False)


@pytest.mark.parametrize("text, message", [
    ("keys:\n  - {id: 'bad id!', secret: x}\n", "key #1 is invalid"),
    ("keys:\n  - {id: a, secret_env: SURELY_UNSET_VAR}\n", "SURELY_UNSET_VAR"),
    ("keys:\n  - {id: a, secret: x}\n  - {id: a, secret: y}\n", "duplicate key ids"),
    ("keys: []\n", "no API keys configured"),
    ("keys: [\n", "cannot read keys file"),
])
def test_bad_keys_file_says_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeysError, match=message):
        load_keys(Settings(llm_keys_file=path))


def test_log_filter_masks_secrets():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "calling with %s", ("sk-secret-abcdef123",), None)
    SecretFilter(["sk-secret-abcdef123"]).filter(record)
    assert record.getMessage() == "calling with sk-…f123"


def test_demo_keys_are_the_default():
    keys = load_keys(Settings())
    assert [k.id for k in keys] == ["demo-1", "demo-2"]
