"""One call to an OpenAI-compatible chat-completions endpoint, with explicit timeouts and typed failures.

Callers decide what a failure means (retry, cool down, disable the key); this module only says which it was.
Error messages name the key by id and masked secret, never in full.

Connections: one urllib3 pool per provider origin per process, shared by the worker's threads and kept alive
(`TC_LLM_HTTP_CONNECTIONS`), with the proxy and CA bundle requests would take from the environment, read once.
requests itself (a session per thread) cost about twice the CPU per call in its own layers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from traffic_celery.llm.keys import ApiKey
from traffic_celery.settings import get_settings

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


_managers: dict[str, urllib3.PoolManager] = {}
_managers_lock = threading.Lock()


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


def _manager(url: str) -> urllib3.PoolManager:
    """The process's connection pool for `url`'s origin: thread-safe, keep-alive (every worker thread shares the
    pool; a connection is reused by whichever thread sends next), made on first use."""
    origin = _origin(url)
    manager = _managers.get(origin)
    if manager is None:
        with _managers_lock:
            manager = _managers.get(origin)
            if manager is None:
                manager = _managers[origin] = _new_manager(url, get_settings().llm_http_connections)
    return manager


def _new_manager(url: str, connections: int) -> urllib3.PoolManager:
    """A pool manager that reaches `url` as requests would: the proxy from the environment (HTTPS_PROXY,
    NO_PROXY, with its credentials) and the CA bundle (REQUESTS_CA_BUNDLE, else certifi's), read once here
    rather than on every call."""
    env = requests.Session().merge_environment_settings(url, {}, None, None, None)
    options: dict[str, Any] = {"maxsize": connections, "block": False}
    if url.lower().startswith("https"):
        verify = env["verify"]
        if verify is False:
            options["cert_reqs"] = "CERT_NONE"
        else:
            where = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
            options["cert_reqs"] = "CERT_REQUIRED"
            options["ca_cert_dir" if os.path.isdir(where) else "ca_certs"] = where
    proxy = requests.utils.select_proxy(url, env["proxies"])
    manager: urllib3.PoolManager
    if proxy:
        manager = urllib3.ProxyManager(proxy, proxy_headers=HTTPAdapter().proxy_headers(proxy), **options)
    else:
        manager = urllib3.PoolManager(**options)
    manager.pool_classes_by_scheme = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}
    return manager


def _retry_after(resp: urllib3.BaseHTTPResponse) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _provider_message(resp: urllib3.BaseHTTPResponse) -> str:
    try:
        return str(json.loads(resp.data)["error"]["message"])[:200]
    except Exception:  # a non-JSON error page
        return resp.data.decode(errors="replace")[:200]


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
        resp = _manager(url).request(
            "POST", url, body=call.body, retries=False, redirect=False,
            timeout=urllib3.Timeout(connect=min(5.0, timeout), read=timeout),
            headers={"Authorization": f"Bearer {key.secret}", "Content-Type": "application/json"})
    except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError to urllib3, not a timeout
        raise ProviderFailed(f"cannot reach the LLM provider at {url} ({exc.__class__.__name__}); "
                             f"check TC_LLM_BASE_URL") from None
    except urllib3.exceptions.TimeoutError:
        raise ProviderFailed(f"LLM call with {who} timed out after {timeout:.0f}s at {url}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ProviderFailed(f"cannot reach the LLM provider at {url} ({exc.__class__.__name__}); "
                             f"check TC_LLM_BASE_URL") from None
    finally:
        _local.on_sent = None
    latency = time.monotonic() - started
    status = resp.status
    if status == 429:
        raise RateLimited(f"LLM provider rate-limited {who}: {_provider_message(resp)}", _retry_after(resp))
    if status in (401, 403):
        raise AuthRejected(f"LLM provider rejected {who} ({status}): {_provider_message(resp)}; "
                           f"check the key in the keys file")
    if 400 <= status < 500:
        raise BadRequest(f"LLM provider refused the request ({status}): {_provider_message(resp)}")
    if status >= 500:
        raise ProviderFailed(f"LLM provider failed ({status}): {_provider_message(resp)}")
    try:
        doc = json.loads(resp.data)
        text = doc["choices"][0]["message"]["content"]
        usage = doc.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProviderFailed(f"LLM provider answered 200 without a chat completion: {resp.data[:80]!r}") from None
    return Completion(text=text if isinstance(text, str) else str(text), model=str(doc.get("model", model)),
                      latency=latency, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      completion_tokens=int(usage.get("completion_tokens", 0)))
