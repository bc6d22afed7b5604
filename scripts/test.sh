#!/usr/bin/env bash
# One command for a fresh machine: set up with the test tools and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
