"""`traffic-celery`: the project's one command (the console script of pyproject.toml).

    traffic-celery run                  the whole system on this machine (what `make demo` runs)
    traffic-celery web | worker | capture | provider | flower | notify     one process of the Procfile
    traffic-celery keys check           one real call per configured API key, as a table
    traffic-celery cameras list | add | remove                    the cameras of a running web tier

Each subcommand imports its implementation only when it runs, so `traffic-celery --help` answers at once. This
module is the user interface: it prints its tables and one-line errors; the code it calls logs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

    from traffic_celery.settings import Settings

PROG = "traffic-celery"
DEFAULT_KEYCHECK_TIMEOUT = 15.0
HTTP_TIMEOUT = 10.0

# subcommands whose options belong to the program they start: passed through as they are
PASSTHROUGH = ("worker", "provider", "flower")

DESCRIPTIONS = {
    "run": "Run the whole system on this machine as the Procfile describes it (what `make demo` runs): find or "
           "start a Redis, start each process, wait for the web tier, print the URL to open. Ctrl-C stops "
           "everything. Same as `python -m traffic_celery.launcher`.",
    "web": "The web tier: page /, WebSocket /ws, REST /api/..., /metrics; also a capture node unless "
           "TC_CAPTURE_IN_WEB=false (python -m web).",
    "worker": "A Celery worker, by default on every key's queue llm.<id> and on 'results' (python -m workers). "
              "Every other option goes to `celery worker` (see `celery -A workers.celery_app worker --help`); "
              "-Q replaces the default queues, e.g. `traffic-celery worker -Q llm.key-1` or "
              "`traffic-celery worker -Q results --pool threads --concurrency 8 --hostname results@%h`.",
    "capture": "Capture nodes on their own, one process per core (TC_CAPTURE_PROCESSES, default auto), for "
               "capture loops beside or instead of the web tier's, here or on other machines "
               "(python -m traffic_celery.capture).",
    "provider": "The fake OpenAI-compatible vision LLM, for the demo and the tests "
                "(python -m traffic_celery.fake_provider); `traffic-celery provider --help` lists its options.",
    "flower": "Flower on the project's Celery app, basic auth from TC_FLOWER_BASIC_AUTH (python -m workers.flower); "
              "other options go to `celery flower`.",
    "notify": "The notify process: incident events and camera states to MQTT (TC_MQTT_URL) and to the webhook "
              "targets of TC_WEBHOOKS_FILE (python -m traffic_celery.notify).",
    "keys": "API keys.",
    "cameras": "Cameras of a running web tier, over its REST API (token from TC_API_TOKEN, sent as "
               "'Authorization: Bearer').",
}


COMMANDS: tuple[str, ...] = tuple(DESCRIPTIONS)  # every subcommand, in the order --help lists them


# --- the parser --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="traffic_celery: traffic-camera risk warnings (capture, YOLO, vision LLM, Celery).",
        epilog=f"`{PROG} COMMAND --help` tells more about each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=DESCRIPTIONS[name], **kwargs)

    run = command("run", "the whole system (make demo)")
    run.add_argument("--processes", metavar="NAMES", help="Procfile entries to run, comma-separated "
                     "(default: all of them: provider,worker,results,web,flower,notify)")
    run.add_argument("--log-dir", metavar="DIR", type=Path, help="write each process's output to DIR/<name>.log "
                     "instead of this terminal")
    run.add_argument("--ready-timeout", metavar="S", type=float, help="seconds to wait for the web tier to answer "
                     "(default 120)")

    command("web", "the web tier (page, WebSocket, REST, metrics)")
    command("worker", "a Celery worker; other options go to `celery worker`")
    command("capture", "a capture node on its own")
    command("notify", "incidents to MQTT and webhooks")
    command("provider", "the fake LLM provider; options: `provider --help`", add_help=False)
    command("flower", "Flower, the Celery monitor; other options go to `celery flower`")

    keys = command("keys", "check the configured API keys")
    keys_actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = keys_actions.add_parser(
        "check", help="one real call per key, as a table",
        description="For each configured key (TC_LLM_KEYS_FILE, TC_LLM_API_KEYS or the demo keys), make one real "
        "chat-completions call (a small image and the project's prompt) against its provider (its base_url, else "
        "TC_LLM_BASE_URL) and print: key id, masked key, base URL, model, result (ok, 401/403 rejected, "
        "429 rate-limited, unreachable, timeout, error <status>) and latency. Exit code 0 if every key is ok, "
        "else 1.")
    check.add_argument("--timeout", metavar="S", type=float, default=DEFAULT_KEYCHECK_TIMEOUT,
                       help=f"seconds to wait for each call (default {DEFAULT_KEYCHECK_TIMEOUT:.0f})")

    cameras = command("cameras", "list, add or remove cameras of a running web tier")
    cam_actions = cameras.add_subparsers(dest="action", metavar="ACTION", required=True)
    url_option = argparse.ArgumentParser(add_help=False)
    url_option.add_argument("--url", metavar="URL", help="the web tier (default http://127.0.0.1:<TC_WEB_PORT>)")
    cam_actions.add_parser("list", parents=[url_option], help="every camera with its state",
                           description="Print every camera: id, state, enabled, URL, capture node, frames analysed.")
    add = cam_actions.add_parser("add", parents=[url_option], help="add a camera (and start it)",
                                 description="Add a camera (POST /api/cameras); it starts at once unless --stopped.")
    add.add_argument("camera_id", metavar="CAMERA_ID", help="a number or a name: letters, digits, '-', '_'")
    add.add_argument("source", metavar="URL", help="rtsp(s):// or http(s):// URL, a file in the media folder "
                     "(TC_MEDIA_DIR) or a webcam index")
    add.add_argument("--frame-interval", metavar="S", type=float, help="seconds between analysed frames "
                     "(default TC_FRAME_INTERVAL)")
    add.add_argument("--stopped", action="store_true", help="add it without starting it")
    remove = cam_actions.add_parser("remove", parents=[url_option], help="remove a camera",
                                    description="Remove a camera (DELETE /api/cameras/<id>); its loop stops.")
    remove.add_argument("camera_id", metavar="CAMERA_ID")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("traffic-celery")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process's exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in PASSTHROUGH:
        name, rest = args_list[0], args_list[1:]
        if name == "provider" or not {"-h", "--help"} & set(rest):  # the provider's --help is its own
            return PASSTHROUGH_RUNNERS[name](rest)
    args = build_parser().parse_args(args_list)
    handler: Callable[[argparse.Namespace], int] = HANDLERS[args.command]
    return handler(args)


# --- processes ---------------------------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from traffic_celery import launcher

    if not launcher.PROCFILE.exists():
        print(f"error: no Procfile at {launcher.PROCFILE}: `{PROG} run` runs from a checkout of the project "
              f"(pip install -e .); elsewhere start the processes one by one ({PROG} web, {PROG} worker, ...)",
              file=sys.stderr)
        return 1
    argv: list[str] = []
    if args.processes is not None:
        argv += ["--processes", args.processes]
    if args.log_dir is not None:
        argv += ["--log-dir", str(args.log_dir)]
    if args.ready_timeout is not None:
        argv += ["--ready-timeout", str(args.ready_timeout)]
    return launcher.main(argv)


def _web(_args: argparse.Namespace) -> int:
    from web.__main__ import main as web_main

    web_main()
    return 0


def _notify(_args: argparse.Namespace) -> int:
    from traffic_celery.notify.service import main as notify_main

    notify_main()
    return 0


def _capture(_args: argparse.Namespace) -> int:
    from traffic_celery.capture.__main__ import main as capture_main

    capture_main()
    return 0


def _worker(argv: list[str]) -> int:
    from workers.__main__ import main as worker_main

    worker_main(argv)
    return 0


def _provider(argv: list[str]) -> int:
    from traffic_celery.fake_provider.__main__ import main as provider_main

    return provider_main(argv)


def _flower(argv: list[str]) -> int:
    from workers.flower import main as flower_main

    flower_main(argv)  # replaces this process with Flower
    return 0


def _passthrough_help(args: argparse.Namespace) -> int:  # reached only for `worker/flower --help`: argparse exits
    return 0


PASSTHROUGH_RUNNERS: dict[str, Callable[[list[str]], int]] = {
    "worker": _worker, "provider": _provider, "flower": _flower}


# --- keys --------------------------------------------------------------------------------------------------------

def _quiet_logging(settings: Settings) -> None:
    """Warnings only, on stderr, secrets masked: the table is the output."""
    import logging

    from traffic_celery.logs import install_secret_filter

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_secret_filter(logging.getLogger(), settings)


def _keys(args: argparse.Namespace) -> int:
    from traffic_celery.llm.keycheck import check_keys
    from traffic_celery.llm.keys import KeysError, load_keys
    from traffic_celery.settings import get_settings

    settings = get_settings()
    _quiet_logging(settings)
    try:
        keys = load_keys(settings)
    except KeysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    checks = check_keys(keys, settings, args.timeout)
    print(table(["KEY", "MASKED", "BASE URL", "MODEL", "RESULT", "LATENCY"],
                [[c.key_id, c.masked, c.base_url, c.model, c.result, f"{c.latency_ms:.0f} ms"] for c in checks]))
    for c in checks:
        if c.detail:
            print(f"{c.key_id}: {c.detail}")
    failed = [c.key_id for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} keys ok" + (f"; failing: {', '.join(failed)}" if failed
                                                                       else ""))
    return 1 if failed else 0


# --- cameras -----------------------------------------------------------------------------------------------------

class WebTierError(Exception):
    """What to tell the user in one line when the web tier cannot do what was asked."""


def _request(settings: Settings, base: str, method: str, path: str,
             body: dict[str, Any] | None = None) -> requests.Response:
    import requests

    headers: dict[str, str] = {}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    try:
        resp = requests.request(method, base + path, json=body, headers=headers, timeout=HTTP_TIMEOUT)
    except requests.Timeout:
        raise WebTierError(f"the web tier at {base} did not answer within {HTTP_TIMEOUT:.0f}s") from None
    except requests.ConnectionError:
        raise WebTierError(f"no web tier answers at {base}; start it with `{PROG} web` (or the whole system with "
                           f"`{PROG} run`), or give its address with --url") from None
    if resp.status_code >= 400:
        try:
            message = str(resp.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = resp.text.strip() or resp.reason
        message = " ".join(message.split())  # one line, whatever the server sent
        raise WebTierError(f"{method} {path}: {resp.status_code} {message}")
    return resp


def _camera_rows(cameras: list[dict[str, Any]]) -> list[list[str]]:
    def text(value: Any) -> str:
        return "-" if value is None or value == "" else str(value).lower() if isinstance(value, bool) else str(value)

    return [[text(c.get("cameraId")), text(c.get("state")), text(c.get("enabled")), text(c.get("url")),
             text(c.get("node")), text(c.get("framesAnalysed", 0))] for c in cameras]


CAMERA_HEADERS = ["ID", "STATE", "ENABLED", "URL", "NODE", "FRAMES"]


def _cameras(args: argparse.Namespace) -> int:
    from traffic_celery.settings import get_settings

    settings = get_settings()
    base = (args.url or f"http://127.0.0.1:{settings.web_port}").rstrip("/")
    try:
        if args.action == "list":
            cameras = _request(settings, base, "GET", "/api/cameras").json()
            if not cameras:
                print(f"no cameras; add one with `{PROG} cameras add CAMERA_ID URL`")
            else:
                print(table(CAMERA_HEADERS, _camera_rows(cameras)))
        elif args.action == "add":
            body: dict[str, Any] = {"cameraId": args.camera_id, "url": args.source, "enabled": not args.stopped}
            if args.frame_interval is not None:
                body["frameInterval"] = args.frame_interval
            camera = _request(settings, base, "POST", "/api/cameras", body).json()
            print(f"added camera {camera.get('cameraId', args.camera_id)}"
                  + (" (stopped)" if args.stopped else ""))
            print(table(CAMERA_HEADERS, _camera_rows([camera])))
        else:
            from urllib.parse import quote

            _request(settings, base, "DELETE", f"/api/cameras/{quote(args.camera_id, safe='')}")
            print(f"removed camera {args.camera_id}")
    except WebTierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --- output ------------------------------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, a header line first."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip()
                     for line in lines)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run, "web": _web, "capture": _capture, "notify": _notify, "keys": _keys, "cameras": _cameras,
    "worker": _passthrough_help, "provider": _passthrough_help, "flower": _passthrough_help,
}


if __name__ == "__main__":
    sys.exit(main())
