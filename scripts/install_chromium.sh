#!/usr/bin/env bash
# Install Debian's Chromium (headless browser tests). Needs root or sudo; about 440 MB.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
echo "install_chromium: $(chromium --version)" >&2
