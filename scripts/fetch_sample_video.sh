#!/usr/bin/env bash
# Fetch the sample street video (vtest.avi, 768x576, 10 fps) from Debian's opencv-doc package into .media/.
# No download of model weights or data at run time: this runs once, from `make demo` / `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.media/vtest.avi
[ -s "$dest" ] && exit 0
mkdir -p .media
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download opencv-doc >/dev/null 2>&1; then
  echo "fetch_sample_video: refreshing apt's package lists (first run on this machine)" >&2
  apt-get update -qq >/dev/null 2>&1 || sudo apt-get update -qq
  apt-get download opencv-doc >/dev/null 2>&1
fi
dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x ./usr/share/doc/opencv-doc/examples/data/vtest.avi
cd - >/dev/null
mv "$work/usr/share/doc/opencv-doc/examples/data/vtest.avi" "$dest"
echo "fetch_sample_video: $dest ready" >&2
