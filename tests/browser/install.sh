#!/usr/bin/env bash
# What the browser checks need, installed when missing: Debian's chromium and chromium-driver
# (apt, as root) and selenium (pip, into the given Python, with the project's constraints).
#   tests/browser/install.sh [python]
set -euo pipefail
PYTHON=${1:-python3}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/browser/install.sh: chromium or chromedriver is missing and this is not root;" \
         "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
"$PYTHON" -c "import selenium" 2>/dev/null ||
  "$PYTHON" -m pip install --quiet --constraint "$ROOT/constraints.txt" "selenium>=4.10"
