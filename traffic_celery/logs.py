"""Logging set-up for every process, with a filter that masks secrets that reach a log line.

Code never logs a secret on purpose (it logs key ids); the filter is the safety net for what a library prints
(an exception text, a request repr, a request log line). It masks every configured API key, the web tier's
`TC_API_TOKEN`, and the value of any `token=` / `access_token=` (or `..._token=`) query parameter, in the
message and in the exception text.

It sits on the root logger's handlers, which every logger that propagates goes through; werkzeug's request log
(`python -m web`) is one of them: werkzeug adds a handler of its own only when no handler up the chain takes its
records, and setup_logging gives the root one first. Loggers with handlers of their own that do not propagate
(gunicorn's `gunicorn.access` and `gunicorn.error`, set up before the app is loaded) get the filter too.
"""

from __future__ import annotations

import logging
import re

from traffic_celery.llm.keys import KeysError, load_keys, mask
from traffic_celery.settings import Settings, get_settings

# `token=abc`, `access_token=abc`, `api_token=abc` in a URL or a form: the value up to the next separator
QUERY_TOKEN = re.compile(r"(?i)\b([a-z_-]*token=)[^&\s\"'#;,]+")


class SecretFilter(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, mask(secret))
        return QUERY_TOKEN.sub(r"\1***", text) if "token=" in text.lower() else text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # what the formatter would print, masked
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        return True


def _secrets(settings: Settings) -> list[str]:
    token = [] if settings.api_token is None else [settings.api_token.get_secret_value()]
    try:
        return [k.secret for k in load_keys(settings)] + token
    except KeysError:
        return token


def install_secret_filter(logger: logging.Logger, settings: Settings | None = None) -> None:
    """Mask secrets in every record that goes through `logger`'s handlers."""
    secret_filter = SecretFilter(_secrets(settings or get_settings()))
    for handler in logger.handlers or logging.getLogger().handlers:
        handler.addFilter(secret_filter)
    if logger is logging.getLogger():  # and the loggers that write through handlers of their own (gunicorn's)
        for other in list(logging.Logger.manager.loggerDict.values()):
            if isinstance(other, logging.Logger) and other.handlers and not other.propagate:
                for handler in other.handlers:
                    handler.addFilter(secret_filter)


def setup_logging(settings: Settings, process: str) -> None:
    """Root logging for a process: one line per record, the process name in it, secrets masked."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")
    install_secret_filter(logging.getLogger(), settings)
