#!/usr/bin/env bash
# Install promtool (Debian's `prometheus` package ships it) for tests/test_alerts.py, which checks and unit-tests
# deployment/alerts.yml. Needs root or sudo; about 100 MB. Nothing to do when promtool is already on PATH.
# The package would start a Prometheus server: a policy-rc.d denies every service start during the install, and
# a server that started anyway (a system whose init ignores policy-rc.d) is stopped and disabled afterwards.
set -euo pipefail
command -v promtool >/dev/null && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then  # an existing policy (a container's "deny all") is left as it is
  printf '#!/bin/sh\n# install_promtool.sh: no service starts while the prometheus package installs\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || {
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
# the server must not run: stop and disable it if the init system started it anyway
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null && { $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true; }
fi
echo "install_promtool: $(promtool --version 2>&1 | head -n 1)" >&2
