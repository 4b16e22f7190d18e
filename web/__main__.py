"""`python -m web`: serve the web tier (threaded WSGI server; flask-sock needs one thread per socket).

SIGTERM and SIGINT stop the capture loops, the event relay and the server, in that order.
"""

from __future__ import annotations

import logging
import signal
import threading

from werkzeug.serving import make_server

from traffic_celery.logs import setup_logging
from traffic_celery.settings import get_settings
from web import create_app, start, stop
from web.auth import bind_address

logger = logging.getLogger("web")


def main() -> None:
    settings = get_settings()
    setup_logging(settings, "web")
    app = start(create_app(settings))
    host = bind_address(settings)
    server = make_server(host, settings.web_port, app, threaded=True)
    stopping = threading.Event()

    def shutdown(*_args: object) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    logger.info("web tier listening on http://%s:%d/%s", host, server.server_port,
                "" if settings.api_token is None else " (token required)")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop(app)
        server.server_close()
        logger.info("web tier stopped")


if __name__ == "__main__":
    main()
