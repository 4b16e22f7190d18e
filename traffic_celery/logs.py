"""Logging set-up for every process, with a filter that masks any configured API key that reaches a log line.

Code never logs a secret on purpose (it logs key ids); the filter is the safety net for what a library prints
(an exception text, a request repr).
"""

from __future__ import annotations

import logging

from traffic_celery.llm.keys import KeysError, load_keys, mask
from traffic_celery.settings import Settings, get_settings


class SecretFilter(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self._secrets:
            if secret in masked:
                masked = masked.replace(secret, mask(secret))
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _secrets(settings: Settings) -> list[str]:
    try:
        return [k.secret for k in load_keys(settings)]
    except KeysError:
        return []


def install_secret_filter(logger: logging.Logger, settings: Settings | None = None) -> None:
    """Mask secrets in every record that goes through `logger`'s handlers."""
    secret_filter = SecretFilter(_secrets(settings or get_settings()))
    for handler in logger.handlers or logging.getLogger().handlers:
        handler.addFilter(secret_filter)


def setup_logging(settings: Settings, process: str) -> None:
    """Root logging for a process: one line per record, the process name in it, secrets masked."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")
    install_secret_filter(logging.getLogger(), settings)
