#!/usr/bin/env bash
# One command for a fresh machine: set up with the test tools and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# The browser tests drive Debian's Chromium (a browser download by Playwright fails here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; the browser tests will be skipped" >&2
fi
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
