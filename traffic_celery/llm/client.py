"""One call to an OpenAI-compatible chat-completions endpoint, with explicit timeouts and typed failures.

Callers decide what a failure means (retry, cool down, disable the key); this module only says which it was.
Error messages name the key by id and masked secret, never in full.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from traffic_celery.llm.keys import ApiKey

logger = logging.getLogger(__name__)


class LLMCallError(RuntimeError):
    """Base of the failures of one call; `retryable` says whether another attempt can succeed."""

    retryable = True


class RateLimited(LLMCallError):
    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


class AuthRejected(LLMCallError):
    retryable = False


class BadRequest(LLMCallError):
    retryable = False


class ProviderFailed(LLMCallError):
    """5xx, a timeout or a broken connection."""


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    latency: float
    prompt_tokens: int
    completion_tokens: int


_local = threading.local()


def _sent() -> None:
    """Called by the connection right after the request is written: tells the caller the real send time."""
    hook = getattr(_local, "on_sent", None)
    if hook is not None:
        _local.on_sent = None
        hook(time.time())


class _TimedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        _sent()


class _TimedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        _sent()


class _TimedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


class _TimedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}


def _session() -> requests.Session:
    """One keep-alive session per thread (requests sessions are not thread-safe)."""
    if not hasattr(_local, "session"):
        session = requests.Session()
        session.mount("http://", _TimedAdapter())
        session.mount("https://", _TimedAdapter())
        _local.session = session
    return cast(requests.Session, _local.session)  # threading.local attributes are untyped


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _provider_message(resp: requests.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])[:200]
    except Exception:  # a non-JSON error page
        return resp.text[:200]


@dataclass(frozen=True)
class Call:
    """A request ready to send: all the encoding is done, so a rate-limit slot is spent on the send alone."""

    key: ApiKey
    url: str
    model: str
    body: bytes


def prepare(key: ApiKey, base_url: str, model: str, messages: list[dict[str, Any]]) -> Call:
    model = key.model or model
    body = {"model": model, "messages": messages, "temperature": 0, "response_format": {"type": "json_object"}}
    return Call(key, (key.base_url or base_url).rstrip("/") + "/chat/completions", model,
                json.dumps(body, separators=(",", ":")).encode())


def chat_completion(key: ApiKey, base_url: str, model: str, messages: list[dict[str, Any]],
                    timeout: float) -> Completion:
    """POST {base_url}/chat/completions with the key's Bearer token; returns the first choice's text."""
    return send(prepare(key, base_url, model, messages), timeout)


def send(call: Call, timeout: float, on_sent: Callable[[float], None] | None = None) -> Completion:
    """Send a prepared call; `on_sent(t)` runs as soon as the request is on the wire, before the reply.
    Raises the typed failures above."""
    key, url, model = call.key, call.url, call.model
    _local.on_sent = on_sent
    who = f"key {key.id} ({key.masked})"
    started = time.monotonic()
    try:
        resp = _session().post(url, data=call.body, timeout=(min(5.0, timeout), timeout),
                               headers={"Authorization": f"Bearer {key.secret}",
                                        "Content-Type": "application/json"})
    except requests.Timeout:
        raise ProviderFailed(f"LLM call with {who} timed out after {timeout:.0f}s at {url}") from None
    except requests.ConnectionError as exc:
        raise ProviderFailed(f"cannot reach the LLM provider at {url} ({exc.__class__.__name__}); "
                             f"check TC_LLM_BASE_URL") from None
    latency = time.monotonic() - started
    if resp.status_code == 429:
        raise RateLimited(f"LLM provider rate-limited {who}: {_provider_message(resp)}", _retry_after(resp))
    if resp.status_code in (401, 403):
        raise AuthRejected(f"LLM provider rejected {who} ({resp.status_code}): {_provider_message(resp)}; "
                           f"check the key in the keys file")
    if 400 <= resp.status_code < 500:
        raise BadRequest(f"LLM provider refused the request ({resp.status_code}): {_provider_message(resp)}")
    if resp.status_code >= 500:
        raise ProviderFailed(f"LLM provider failed ({resp.status_code}): {_provider_message(resp)}")
    try:
        doc = resp.json()
        text = doc["choices"][0]["message"]["content"]
        usage = doc.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProviderFailed(f"LLM provider answered 200 without a chat completion: {resp.text[:80]!r}") from None
    return Completion(text=text if isinstance(text, str) else str(text), model=str(doc.get("model", model)),
                      latency=latency, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      completion_tokens=int(usage.get("completion_tokens", 0)))
