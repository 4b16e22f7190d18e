"""The project's fake OpenAI-compatible vision LLM provider (`python -m traffic_celery.fake_provider`)."""

from traffic_celery.fake_provider.server import (
    ProviderServer,
    ProviderState,
    assess_from_facts,
    validate_request,
)

__all__ = ["ProviderServer", "ProviderState", "assess_from_facts", "validate_request"]
