# The two commands of the README: `make demo` runs the whole system, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.run/ultralytics

.PHONY: demo test lint install install-dev media browser promtool mosquitto clean

# the pins (requirements.txt), then the project itself, editable, for the `traffic-celery` command the Procfile runs
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

media:
	@scripts/fetch_sample_video.sh

# Debian's Chromium for the browser tests (Playwright cannot download its own browser here).
browser:
	@command -v chromium >/dev/null || scripts/install_chromium.sh

# promtool (Debian's prometheus package, the server never started) for tests/test_alerts.py
promtool:
	@scripts/install_debian_tool.sh promtool prometheus prometheus

# Debian's mosquitto binary for tests/test_notify.py, which starts its own brokers (the service never started)
mosquitto:
	@scripts/install_debian_tool.sh mosquitto mosquitto mosquitto

demo: install media
	$(VENV)/bin/traffic-celery run

# ruff (pyproject.toml [tool.ruff]) and mypy (pyproject.toml [tool.mypy]: strict on traffic_celery)
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: install-dev media browser promtool mosquitto lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache
