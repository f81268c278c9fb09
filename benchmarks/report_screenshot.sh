#!/usr/bin/env bash
# Screenshot of a results page (python -m pipeline.report build ... --out-html PAGE) in headless
# Chromium, to look at what a reader sees without a desktop:
#
#   benchmarks/report_screenshot.sh reports/results.html /tmp/results.png [WIDTH,HEIGHT]
#
# Needs chromium (Debian: apt-get install -y chromium). --no-sandbox because containers usually
# run as root, where Chromium's sandbox refuses to start; the page is our own file and runs no
# scripts. The page fetches nothing, so no network is needed.
set -euo pipefail
page=${1:?usage: $0 PAGE.html OUT.png [WIDTH,HEIGHT]}
out=${2:?usage: $0 PAGE.html OUT.png [WIDTH,HEIGHT]}
size=${3:-1400,2000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no chromium found; install it (apt-get install -y chromium)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
# A throw-away profile: a shared one can be locked by another Chromium.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$(realpath -m "$out")" --window-size="$size" "file://$(realpath "$page")" 2>/dev/null
test -s "$out" && echo "wrote $out ($size)"
