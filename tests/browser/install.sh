#!/usr/bin/env bash
# What the browser checks need, installed when missing: Debian's chromium and chromium-driver
# (apt, as root), selenium (pip, into the given Python, with the project's constraints) and,
# when a folder is given and npm is there, npm's mathjax@3 package (to typeset the equations
# offline, in place of the CDN the book loads).
#   tests/browser/install.sh [python] [mathjax-folder]
set -euo pipefail
PYTHON=${1:-python3}
MATHJAX=${2:-}
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
if [ -n "$MATHJAX" ] && [ ! -f "$MATHJAX/es5/tex-mml-chtml.js" ]; then
  if command -v npm >/dev/null; then
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent mathjax@3 >/dev/null)
    mkdir -p "$MATHJAX"
    tar -xzf "$tmp"/mathjax-3*.tgz -C "$MATHJAX" --strip-components=1 package/es5
    rm -rf "$tmp"
  else
    echo "tests/browser/install.sh: npm is missing: equations will not be typeset, their width not checked" >&2
  fi
fi
