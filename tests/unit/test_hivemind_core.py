"""swarm/ imports hivemind's DHT and P2P without the package's __init__ (scipy and the
averager cost every process ~0.35 s), yet the rest of hivemind is still there on demand."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_swarm_imports_without_hivemind_init_and_the_rest_loads_on_demand():
    code = textwrap.dedent("""
        import sys
        import swarmllm.swarm
        assert "scipy" not in sys.modules and "hivemind.averaging" not in sys.modules, "hivemind's __init__ ran"
        import hivemind
        assert hivemind.DHT.__name__ == "DHT" and hivemind.__version__
        assert "hivemind.averaging" in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
