# The two commands of the README: `make demo` runs the whole system, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.run/ultralytics

.PHONY: demo test install install-dev media browser clean

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
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

demo: install media
	$(PY) -m traffic_celery.launcher

test: install-dev media browser
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache
