"""A test-only hostile node: `swarmllm serve` that lies about its speed.

Run as `python tests/hostile/slow_node.py SECONDS serve ...`: every batch of steps it computes
takes SECONDS longer (a sleep before the real computation, so outputs stay correct), while the
node announces whatever `--throughput` it is given (e.g. 1e9, the most a record may claim). Pings are answered at full
speed, so only a client that times real steps can tell.
"""

from __future__ import annotations

import sys
import time

from swarmllm import cli
from swarmllm.engine.blocks import SpanModel


def main() -> int:
    delay = float(sys.argv[1])
    honest = SpanModel.forward_many

    def slow_forward_many(self, steps):
        time.sleep(delay)
        return honest(self, steps)

    SpanModel.forward_many = slow_forward_many
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
