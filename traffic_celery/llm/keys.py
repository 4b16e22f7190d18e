"""API keys: loading them from the YAML file or the env form, masking them, and picking one for a task.

Only the key *id* ever leaves this module in a task, a log line or a stat; the secret is resolved where the HTTP
call is made. `mask()` is the only way a secret is shown (`sk-…abcd`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from traffic_celery.settings import DEMO_KEYS_FILE, REPO_ROOT, Settings

logger = logging.getLogger(__name__)


def mask(secret: str) -> str:
    """`sk-…abcd`: enough to tell keys apart, never enough to use one."""
    if len(secret) <= 8:
        return "…" + secret[-2:] if len(secret) > 4 else "…"
    return f"{secret[:3]}…{secret[-4:]}"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    secret: str = Field(min_length=1, repr=False)
    base_url: str | None = None
    model: str | None = None
    qps: float = Field(default=5.0, gt=0)
    rpm: int = Field(default=300, gt=0)
    max_in_flight: int = Field(default=4, gt=0)
    weight: float = Field(default=1.0, gt=0)
    enabled: bool = True

    @property
    def masked(self) -> str:
        return mask(self.secret)

    @property
    def queue(self) -> str:
        return f"llm.{self.id}"

    def __str__(self) -> str:  # never the secret, even by accident
        return f"ApiKey({self.id}, {self.masked})"


class KeysError(ValueError):
    """The keys configuration is unusable; the message says which entry and how to fix it."""


def _from_yaml(path: Path) -> list[ApiKey]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KeysError(f"cannot read keys file {path}: {exc.__class__.__name__}; check TC_LLM_KEYS_FILE") from None
    defaults = doc.get("defaults") or {}
    keys = []
    for i, entry in enumerate(doc.get("keys") or []):
        entry = {**defaults, **(entry or {})}
        env_name = entry.pop("secret_env", None)
        if env_name:  # the secret itself lives in the environment, not in the file
            entry["secret"] = os.environ.get(env_name, "")
            if not entry["secret"]:
                raise KeysError(f"keys file {path}: key #{i + 1} reads its secret from ${env_name}, which is unset")
        try:
            keys.append(ApiKey(**entry))
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) + ": " + e["msg"] for e in exc.errors())
            raise KeysError(f"keys file {path}: key #{i + 1} is invalid ({fields})") from None
    return keys


def _from_env(value: str) -> list[ApiKey]:
    keys = []
    for i, item in enumerate(p.strip() for p in value.split(",") if p.strip()):
        key_id, sep, secret = item.partition("=")
        if not sep:
            key_id, secret = f"key-{i + 1}", item
        try:
            keys.append(ApiKey(id=key_id.strip(), secret=secret.strip()))
        except ValidationError:
            raise KeysError(f"TC_LLM_API_KEYS entry #{i + 1} is invalid; use 'id=secret,id2=secret2'") from None
    return keys


def load_keys(settings: Settings) -> list[ApiKey]:
    """Keys from TC_LLM_KEYS_FILE, else TC_LLM_API_KEYS, else the demo keys of the local fake provider."""
    if settings.llm_keys_file is not None:
        path = settings.llm_keys_file if settings.llm_keys_file.is_absolute() else REPO_ROOT / settings.llm_keys_file
        keys = _from_yaml(path)
    elif settings.llm_api_keys:
        keys = _from_env(settings.llm_api_keys)
    else:
        keys = _from_yaml(DEMO_KEYS_FILE)
    if not keys:
        raise KeysError("no API keys configured; set TC_LLM_KEYS_FILE or TC_LLM_API_KEYS")
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise KeysError(f"duplicate key ids in the keys configuration: {sorted({i for i in ids if ids.count(i) > 1})}")
    return keys


class KeyPool:
    """The configured keys, looked up by id. Choosing a key for a task lives in :mod:`traffic_celery.llm.router`."""

    def __init__(self, keys: list[ApiKey]):
        self._by_id = {k.id: k for k in keys}

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyPool:
        return cls(load_keys(settings))

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, key_id: str) -> ApiKey:
        try:
            return self._by_id[key_id]
        except KeyError:
            raise KeysError(f"unknown API key id {key_id!r}; known ids: {sorted(self._by_id)}") from None

    @property
    def enabled(self) -> list[ApiKey]:
        return [k for k in self._by_id.values() if k.enabled]

    @property
    def queues(self) -> list[str]:
        return [k.queue for k in self._by_id.values()]
