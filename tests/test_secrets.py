"""No secret in the repository: every tracked file is scanned for the shapes real credentials take (provider API
keys, cloud keys, private keys, tokens), and the key files carry secrets only by reference (`secret_env`), except
the demo file whose keys only the local fake provider accepts.

The scanner is tested on a planted key first, so a scan that finds nothing means something.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from traffic_celery.settings import REPO_ROOT

PATTERNS = {
    "OpenAI/DashScope-style API key": re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9]{20,}"),
    "AWS access key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "bearer token in a URL or header": re.compile(r"Bearer [A-Za-z0-9._~+/=-]{32,}"),
}
DEMO_KEYS = "config/keys.demo.yaml"  # accepted by the local fake provider only


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return [REPO_ROOT / name for name in out.decode().split("\0") if name]


def scan(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except (IsADirectoryError, FileNotFoundError):
        return []
    return [f"{path.relative_to(REPO_ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {kind}"
            for kind, pattern in PATTERNS.items() for m in pattern.finditer(text)]


def test_the_scanner_finds_a_planted_key(tmp_path):
    planted = REPO_ROOT / ".run" / "planted-secret.txt"  # inside the repository root, never tracked (.run/)
    planted.parent.mkdir(exist_ok=True)
    try:
        planted.write_text("api_key = " + "sk-" + "3f9a1c" * 6 + "\nkey: " + "AKIA" + "Q" * 16 + "\n")
        assert [hit.split(": ", 1)[1] for hit in scan(planted)] == ["OpenAI/DashScope-style API key",
                                                                   "AWS access key id"]
    finally:
        planted.unlink(missing_ok=True)


def test_no_tracked_file_holds_a_secret():
    files = tracked_files()
    assert len(files) > 50
    hits = [hit for path in files for hit in scan(path)]
    assert hits == [], "secrets in the repository:\n" + "\n".join(hits)


def test_key_files_name_their_secrets_by_environment_variable():
    for path in sorted((REPO_ROOT / "config").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text())
        for key in doc.get("keys", []):
            if str(path.relative_to(REPO_ROOT)) == DEMO_KEYS:
                assert key["secret"].startswith("demo-local-provider-key-"), key["id"]
            else:
                assert "secret" not in key and key.get("secret_env"), f"{path.name}: key {key['id']} holds its secret"


def test_local_files_with_secrets_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "deployment/.env", ".env", "config/keys.yaml"],
                             cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    assert set(ignored) == {"deployment/.env", ".env", "config/keys.yaml"}
