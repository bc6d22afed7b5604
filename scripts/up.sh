#!/usr/bin/env bash
# One command for a fresh machine: set up, start a local swarm (bootstrap + 3 nodes) on the
# bundled model, generate a first reply through it, and keep the swarm up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/swarmllm up --prompt "${SWARMLLM_PROMPT:-In one sentence, what is a swarm?}" "$@"
