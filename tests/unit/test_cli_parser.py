"""The CLI spells out a few protocol and engine constants (importing them pulls in torch,
which would slow every command before it parses its arguments): they must stay equal."""

import subprocess
import sys

from swarmllm import cli_parser as cli
from swarmllm.engine.quant import QUANT_MODES
from swarmllm.protocol import WIRE_DTYPES


def test_spelled_out_constants_match():
    assert cli.WIRE_DTYPES == WIRE_DTYPES
    assert cli.QUANT_MODES == QUANT_MODES
    from swarmllm.server.partitioner import _UNITS, parse_memory
    assert cli._SIZE_UNITS == _UNITS  # --max-memory reads sizes as `swarmllm plan` does
    assert all(cli._size(text) == parse_memory(text, "x") for text in ("8GB", "512MiB", "6", "1.5gib"))


def test_building_the_parser_imports_no_torch():
    code = "import sys; from swarmllm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
