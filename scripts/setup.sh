#!/usr/bin/env bash
# Set up swarmllm on a fresh machine: a virtual environment in .venv with the pinned CPU
# build of PyTorch, the package (editable) and, with --test, the test tools.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "swarmllm needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and exactly pinned: this version is served as a CPU wheel; a looser spec pulls CUDA.
python -c 'import torch' 2>/dev/null || pip install -q torch==2.13.0
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if [ ! -f .venv/.installed$extras ] || [ pyproject.toml -nt .venv/.installed$extras ]; then
  pip install -q -e ".$extras"
  touch .venv/.installed$extras
fi
