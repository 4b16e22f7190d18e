"""The `traffic-celery` console script, run as installed (`make install` puts it in .venv/bin), against the real
parts: the fake provider for `keys check`, a real web tier for `cameras`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from traffic_celery.embedded_redis import free_port
from traffic_celery.llm.keys import mask
from traffic_celery.settings import REPO_ROOT

from .conftest import TEST_KEYS, Proc, start_web, wait_for

CLI = Path(sys.executable).parent / "traffic-celery"
SECRETS = {pair.split("=")[0]: pair.split("=", 1)[1] for pair in TEST_KEYS.split(",")}  # key id -> secret
TOKEN = "cli-test-token-5e0c9a27d41b"
SUBCOMMANDS = ("run", "web", "worker", "capture", "provider", "flower", "notify", "keys", "cameras")


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    assert CLI.exists(), f"{CLI} is missing: install the project into this venv (make install: pip install -e .)"


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def rows(output: str) -> dict[str, str]:
    """The table lines of `output` by their first column."""
    return {line.split()[0]: line for line in output.splitlines() if line.strip()}


# --- help ----------------------------------------------------------------------------------------------------------

def test_help_lists_every_subcommand(base_env):
    done = cli("--help", env=base_env)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert set(SUBCOMMANDS) <= listed, done.stdout
    for args in (["run", "--help"], ["worker", "--help"], ["keys", "check", "--help"], ["cameras", "add", "--help"],
                 ["provider", "--help"]):
        done = cli(*args, env=base_env)
        assert done.returncode == 0 and "usage:" in done.stdout, (args, done.stdout, done.stderr)
    assert "--revoked" in done.stdout  # the provider's own options


def test_run_refuses_a_process_that_is_not_in_the_procfile(base_env):
    done = cli("run", "--processes", "web,nope", env=base_env)
    assert done.returncode == 2 and "unknown process ['nope']" in done.stderr, done.stderr


def test_an_unknown_subcommand_is_a_usage_error(base_env):
    done = cli("serve", env=base_env)
    assert done.returncode == 2 and "invalid choice" in done.stderr


# --- keys check ----------------------------------------------------------------------------------------------------

def assert_no_secret(done: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS.values():
        assert secret not in done.stdout + done.stderr


def test_keys_check_all_ok(system_env, provider):
    done = cli("keys", "check", env=system_env)
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table["KEY"].split()[:2] == ["KEY", "MASKED"]
    for key_id, secret in SECRETS.items():
        row = table[key_id]
        assert mask(secret) in row and provider["url"] in row and "qwen-vl-plus" in row, row
        assert row.split()[4] == "ok" and row.endswith(" ms"), row
    assert "2 of 2 keys ok" in done.stdout
    assert_no_secret(done)


def test_keys_check_reports_a_revoked_key(system_env, log_dir):
    port = free_port()
    revoked = Proc("provider-revoked", [str(CLI), "provider", "--port", str(port), "--latency", "0.05",
                                        "--revoked", "test-b"], system_env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/health", timeout=1).ok, 30, "the second fake provider")
        done = cli("keys", "check", env={**system_env, "TC_LLM_BASE_URL": url + "/v1"})
    finally:
        revoked.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    table = rows(done.stdout)
    assert table["test-a"].split()[4] == "ok"
    assert table["test-b"].split()[4:6] == ["401", "rejected"], table["test-b"]
    assert "failing: test-b" in done.stdout
    assert_no_secret(done)


def test_keys_check_reports_an_unreachable_provider(system_env):
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    done = cli("keys", "check", "--timeout", "5", env={**system_env, "TC_LLM_BASE_URL": closed})
    assert done.returncode == 1
    table = rows(done.stdout)
    for key_id in SECRETS:
        assert table[key_id].split()[4] == "unreachable" and closed in table[key_id], table[key_id]
    assert_no_secret(done)


def test_keys_check_reports_a_bad_keys_configuration(base_env):
    done = cli("keys", "check", env={**base_env, "TC_LLM_API_KEYS": "bad id=secret"})
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: TC_LLM_API_KEYS entry #1 is invalid"), done.stderr


# --- cameras -------------------------------------------------------------------------------------------------------

def test_cameras_add_list_remove(web, base_env, sample_video):
    done = cli("cameras", "add", "cli-1", str(sample_video), "--frame-interval", "1", "--url", web, env=base_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("added camera cli-1")
    done = cli("cameras", "add", "cli-2", str(sample_video), "--stopped", "--url", web, env=base_env)
    assert done.returncode == 0 and "(stopped)" in done.stdout, done.stdout + done.stderr

    done = cli("cameras", "list", "--url", web, env=base_env)
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table["ID"].split() == ["ID", "STATE", "ENABLED", "URL", "NODE", "FRAMES"]
    assert table["cli-1"].split()[2:4] == ["true", str(sample_video)], table["cli-1"]
    assert table["cli-2"].split()[1:4] == ["stopped", "false", str(sample_video)], table["cli-2"]
    cameras = {c["cameraId"]: c for c in requests.get(web + "/api/cameras", timeout=10).json()}
    assert cameras["cli-1"]["frameInterval"] == 1 and cameras["cli-2"]["enabled"] is False

    for camera_id in ("cli-1", "cli-2"):
        done = cli("cameras", "remove", camera_id, "--url", web, env=base_env)
        assert done.returncode == 0 and done.stdout.strip() == f"removed camera {camera_id}", done.stderr
    done = cli("cameras", "list", "--url", web, env=base_env)
    assert done.returncode == 0 and done.stdout.startswith("no cameras"), done.stdout


def test_cameras_errors_are_the_servers_message_in_one_line(web, base_env, sample_video):
    done = cli("cameras", "add", "cli-bad", "ftp://example.com/stream", "--url", web, env=base_env)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: POST /api/cameras: 400 unsupported camera URL scheme 'ftp'"), done.stderr

    done = cli("cameras", "remove", "cli-missing", "--url", web, env=base_env)
    assert done.returncode == 1 and done.stderr.strip() == "error: DELETE /api/cameras/cli-missing: 404 no camera " \
        "cli-missing"

    done = cli("cameras", "add", "bad id!", str(sample_video), "--url", web, env=base_env)
    assert done.returncode == 1 and "400 cameraId:" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cameras_without_a_web_tier_says_how_to_start_it(base_env):
    port = free_port()  # nothing listens there
    for env, args in (({**base_env, "TC_WEB_PORT": str(port)}, []), (base_env, ["--url", f"http://127.0.0.1:{port}"])):
        done = cli("cameras", "list", *args, env=env)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.strip() == (f"error: no web tier answers at http://127.0.0.1:{port}; start it with "
                                       "`traffic-celery web` (or the whole system with `traffic-celery run`), or "
                                       "give its address with --url"), done.stderr


@pytest.fixture(scope="module")
def guarded_web(system_env, log_dir):
    proc, url = start_web({**system_env, "TC_API_TOKEN": TOKEN, "TC_CAPTURE_IN_WEB": "false"}, log_dir, "web-cli")
    try:
        yield url
    finally:
        proc.stop()


def test_cameras_send_the_token_as_a_bearer_header(guarded_web, base_env, sample_video):
    """The token of TC_API_TOKEN goes in the Authorization header: the web tier refuses one in the URL."""
    port = guarded_web.rsplit(":", 1)[1]
    env = {**base_env, "TC_API_TOKEN": TOKEN, "TC_WEB_PORT": port}  # the default --url: 127.0.0.1:TC_WEB_PORT
    done = cli("cameras", "add", "cli-tok", str(sample_video), "--stopped", env=env)
    assert done.returncode == 0, done.stderr
    done = cli("cameras", "list", env=env)
    assert done.returncode == 0 and "cli-tok" in rows(done.stdout), done.stderr
    assert TOKEN not in done.stdout + done.stderr

    done = cli("cameras", "list", env={**base_env, "TC_WEB_PORT": port})  # no token
    assert done.returncode == 1 and done.stderr.startswith("error: GET /api/cameras: 401 missing token")
    assert len(done.stderr.strip().splitlines()) == 1
    assert cli("cameras", "remove", "cli-tok", env=env).returncode == 0
