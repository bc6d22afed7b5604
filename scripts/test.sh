#!/usr/bin/env bash
# One command for a fresh machine: set up with the test tools and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# The browser tests drive Debian's Chromium (a browser download by Playwright fails here); the NAT
# tests build network namespaces with iproute2 and nftables (as root; skipped otherwise).
packages=""
command -v chromium >/dev/null 2>&1 || packages="$packages chromium"
command -v nft >/dev/null 2>&1 || packages="$packages nftables"
command -v ip >/dev/null 2>&1 || packages="$packages iproute2"
if [ -n "$packages" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $packages >/dev/null; } \
    || echo "warning: could not install$packages; the tests that need them will be skipped" >&2
fi
.venv/bin/lint-imports
# docs/protocol.md is generated from the protocol's schemas; fail when it no longer matches them.
.venv/bin/python -m swarmllm.protocol.spec --check
# The slowest tests are listed at the end, so that a slow CI run says where its time went.
exec .venv/bin/python -m pytest --durations=30 "$@"
