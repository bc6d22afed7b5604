"""`python -m swarmllm`: the CLI (what the updater re-executes after installing a release)."""

import sys

from swarmllm.cli import main

sys.exit(main())
