"""The compose file and the Prometheus config, checked against the code (no Docker engine here): every command
runs a module that exists, every TC_ variable is a setting, every key has its worker, every scrape target is a
service. With the docker client installed, `docker compose config` validates the file too."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from traffic_celery.llm.keys import load_keys
from traffic_celery.settings import REPO_ROOT, Settings

from .conftest import scrape

DEPLOYMENT = REPO_ROOT / "deployment"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOYMENT / "docker-compose.yml").read_text())


def commands(compose: dict) -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in compose["services"].items() if "command" in svc and
            svc["command"][0] in ("traffic-celery", "gunicorn")}


def test_every_command_runs_a_module_of_the_project(compose):
    """`traffic-celery SUBCOMMAND` is the console script of pyproject.toml with one of its subcommands; gunicorn
    loads a module of the project with a config file that exists."""
    from traffic_celery.cli import COMMANDS

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["traffic-celery"] == "traffic_celery.cli:main"
    found = commands(compose)
    assert {"web", "results", "flower", "provider", "capture", "notify"} <= set(found)
    for name, cmd in found.items():
        if cmd[0] == "traffic-celery":
            assert cmd[1] in COMMANDS, f"{name}: traffic-celery has no subcommand {cmd[1]}"
        else:
            module = cmd[-1].split(":")[0]
            assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
            assert (REPO_ROOT / cmd[cmd.index("-c") + 1]).exists()


def test_every_tc_variable_is_a_setting(compose):
    fields = {f"TC_{name.upper()}" for name in Settings.model_fields}
    for name, svc in compose["services"].items():
        for var in (svc.get("environment") or {}):
            if var.startswith("TC_"):
                assert var in fields, f"{name}: {var} is not a setting"


def test_every_key_of_the_keys_file_has_a_worker_on_its_queue(compose):
    env = compose["services"]["web"]["environment"]
    keys_file = REPO_ROOT / env["TC_LLM_KEYS_FILE"].replace("/app/", "")
    queues = {q for cmd in commands(compose).values() if "-Q" in cmd for q in cmd[cmd.index("-Q") + 1].split(",")}
    for key in load_keys(Settings(llm_keys_file=keys_file)):
        assert key.queue in queues, f"no worker consumes {key.queue}"
    assert "results" in queues
    assert "webhooks" in queues, "no worker consumes the webhooks queue"


def test_compose_has_every_part_of_the_system(compose):
    assert {"redis", "kafka", "web", "results", "flower", "provider", "prometheus", "grafana"} <= set(
        compose["services"])
    assert compose["services"]["provider"]["profiles"] == ["demo"]


def test_prometheus_scrapes_services_of_the_compose_file(compose):
    config = yaml.safe_load((DEPLOYMENT / "prometheus.yml").read_text())
    metrics_port = compose["x-app"]["environment"]["TC_METRICS_PORT"]
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    targets += [f"{name}:{sd['port']}" for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
                for name in sd["names"]]
    assert len(targets) >= 5
    for target in targets:
        host, port = target.split(":")
        assert host in compose["services"], target
        published = [p.split(":")[-1] for p in compose["services"][host].get("ports", [])]
        app_service = compose["services"][host].get("image") == compose["x-app"]["image"]
        assert port in published or host == "web" or (app_service and port == metrics_port), target
    scraped_hosts = {t.split(":")[0] for t in targets}
    workers = {name for name, cmd in commands(compose).items() if cmd[:2] == ["traffic-celery", "worker"]}
    assert workers and workers <= scraped_hosts, "every worker's metrics are scraped"


def test_grafana_dashboard_uses_only_metrics_the_system_exports(web):
    """Every `tc_*` series a panel queries is one the system exports (the web tier's /metrics, or an instrument
    not touched yet in this session); the data source is the provisioned one."""
    from traffic_celery.telemetry import instruments

    dashboard = json.loads((DEPLOYMENT / "grafana" / "dashboards" / "traffic_celery.json").read_text())
    datasource = yaml.safe_load((DEPLOYMENT / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                                .read_text())["datasources"][0]
    exported = {name for name, _, _ in scrape(web)}
    for metric in vars(instruments.get()).values():
        for family in metric.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
            exported |= {family.name + suffix for suffix in suffixes}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    queried = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\btc_[a-z0-9_]+", target["expr"]))
    assert queried and queried <= exported, f"not exported: {sorted(queried - exported)}"
    for needed in ("tc_assessments_total", "tc_llm_key_queue_depth", "tc_llm_request_duration_seconds_bucket",
                   "tc_llm_key_rate_limited_total", "tc_tasks_succeeded_total"):
        assert needed in queried


def has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not has_compose(), reason="no docker compose client on this machine")
def test_docker_compose_config_accepts_the_file():
    subprocess.run(["docker", "compose", "-f", str(DEPLOYMENT / "docker-compose.yml"), "config", "-q"],
                   check=True, timeout=60)
