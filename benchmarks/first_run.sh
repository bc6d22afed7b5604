#!/usr/bin/env bash
# Time a fresh clone of this repository (or of $1) -> first token of `bash scripts/up.sh`, with an empty pip cache.
set -u
SOURCE=$(cd "${1:-$(dirname "$0")/..}" && pwd)  # the repository to clone
rm -rf /tmp/fresh && mkdir -p /tmp/fresh
export PIP_NO_CACHE_DIR=1 SWARMLLM_HOME=/tmp/fresh/home
start=$(date +%s.%N)
git clone -q "$SOURCE" /tmp/fresh/swarmllm
cd /tmp/fresh/swarmllm
( bash scripts/up.sh --exit-after-prompt --port 8765 2>&1 || true ) | while IFS= read -r line; do
  now=$(date +%s.%N); printf '%7.1f %s\n' "$(echo "$now - $start" | bc)" "$line"
done > /tmp/fresh/up.log &
for i in $(seq 1 900); do
  sleep 1
  if grep -qE "stopping|error" /tmp/fresh/up.log; then break; fi
done
sleep 3
cat /tmp/fresh/up.log
pkill -f /tmp/fresh/swarmllm/.venv || true
sleep 3; pgrep -af /tmp/fresh/swarmllm | head
