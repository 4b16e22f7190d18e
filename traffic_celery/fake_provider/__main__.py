"""`python -m traffic_celery.fake_provider`: serve the fake provider until SIGINT/SIGTERM.

Keys and their QPS come from the project's keys configuration (TC_LLM_KEYS_FILE, TC_LLM_API_KEYS or the demo
keys); host, port and latency from settings; flags override.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from traffic_celery.fake_provider.server import (
    DEFAULT_MODELS,
    Faults,
    ProviderServer,
    ProviderState,
)
from traffic_celery.llm.keys import KeysError, load_keys
from traffic_celery.logs import setup_logging
from traffic_celery.settings import get_settings

logger = logging.getLogger("traffic_celery.fake_provider")


def main(argv: list[str]) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m traffic_celery.fake_provider", description=__doc__)
    parser.add_argument("--host", default=settings.provider_host)
    parser.add_argument("--port", type=int, default=settings.provider_port)
    parser.add_argument("--latency", type=float, default=settings.provider_latency, help="seconds per reply")
    parser.add_argument("--qps", type=float, default=None, help="per-key QPS limit for every key "
                        "(default: each key's qps from the keys configuration)")
    parser.add_argument("--rpm", type=float, default=None, help="per-key RPM limit for every key "
                        "(default: each key's rpm from the keys configuration)")
    parser.add_argument("--key-limit", action="append", default=[], metavar="ID=QPS[/RPM]",
                        help="the provider's own limit for one key, whatever the keys file says (repeatable)")
    parser.add_argument("--revoked", action="append", default=[], metavar="ID",
                        help="this key answers 401, as if revoked (repeatable)")
    parser.add_argument("--latency-jitter", type=float, default=0.0, help="plus uniform [0, J) seconds")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of 500 answers")
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="fraction of non-JSON replies")
    parser.add_argument("--wrong-schema-rate", type=float, default=0.0, help="fraction of JSON replies in "
                        "another schema")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="fraction of requests never answered")
    parser.add_argument("--no-retry-after", action="store_true", help="send 429s without Retry-After")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault and latency draws")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="accepted model names")
    args = parser.parse_args(argv)
    setup_logging(settings, "provider")
    try:
        keys = load_keys(settings)
    except KeysError as exc:
        logger.error("%s", exc)
        return 2
    qps = {k.id: args.qps or k.qps for k in keys}
    rpm = {k.id: args.rpm or k.rpm for k in keys}
    for item in args.key_limit:
        key_id, _, limits = item.partition("=")
        q, _, m = limits.partition("/")
        qps[key_id] = float(q)
        if m:
            rpm[key_id] = float(m)
    faults = Faults(error_rate=args.error_rate, malformed_rate=args.malformed_rate,
                    wrong_schema_rate=args.wrong_schema_rate, hang_rate=args.hang_rate, latency=args.latency,
                    latency_jitter=args.latency_jitter, seed=args.seed,
                    retry_after=not args.no_retry_after)
    state = ProviderState({k.secret: (k.id, qps[k.id]) for k in keys}, rpm=rpm, revoked=tuple(args.revoked),
                          faults=faults, models=tuple(m for m in args.models.split(",") if m))
    server = ProviderServer((args.host, args.port), state)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    logger.info("fake LLM provider listening on %s (%d keys, latency %.2fs)", server.url, len(keys), args.latency)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        logger.info("fake LLM provider stopped after %d requests", state.stats()["requests"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
