#!/usr/bin/env bash
# install_debian_tool.sh COMMAND PACKAGE SERVICE: install Debian's PACKAGE for the binary COMMAND the tests run
# (promtool from `prometheus`, mosquitto from `mosquitto`), never its server as a service. Nothing to do when
# COMMAND is already on PATH (or in /usr/sbin). Needs root or sudo.
# The package would start its service: a policy-rc.d denies every service start during the install, and a service
# that started anyway (an init system that ignores policy-rc.d) is stopped and disabled afterwards.
set -euo pipefail
COMMAND=$1 PACKAGE=$2 SERVICE=$3
command -v "$COMMAND" >/dev/null || [ -x "/usr/sbin/$COMMAND" ] && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then  # an existing policy (a container's "deny all") is left as it is
  printf '#!/bin/sh\n# install_debian_tool.sh: no service starts while a package installs\nexit 101\n' \
    | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null 2>&1 || {
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null; }
# the service must not run: stop and disable it if the init system started it anyway
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  $SUDO systemctl disable --now "$SERVICE.service" >/dev/null 2>&1 || true
elif [ -x "/etc/init.d/$SERVICE" ]; then
  $SUDO "/etc/init.d/$SERVICE" stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null && { $SUDO update-rc.d "$SERVICE" disable >/dev/null 2>&1 || true; }
fi
echo "install_debian_tool: $PACKAGE installed for $COMMAND" >&2
