"""Import hivemind's DHT and P2P without running the package's `__init__`.

`import hivemind.dht.node` first runs `hivemind/__init__.py`, which imports the averager, the
mixture-of-experts server and the optimizer, and through them scipy.optimize: about 0.35 s
of every swarmllm process's start-up (measured with `python -X importtime`), for code this
project never uses. Importing this module before any other hivemind import registers a
package module named "hivemind" whose `__path__` is the installed package's, so that its
submodules (`hivemind.dht`, `hivemind.p2p`, `hivemind.utils`, ...) import as usual.

What it keeps: anything asking the bare package for a name it lacks (`hivemind.DHT`,
`hivemind.__version__`) gets the real `__init__` run on first use, so other code still sees
the whole of hivemind. If hivemind was imported before this module, nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def _install() -> None:
    if "hivemind" in sys.modules:
        return
    spec = importlib.util.find_spec("hivemind")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a package: let the real import fail with its own message
    package = importlib.util.module_from_spec(spec)  # sets __path__, __spec__, __file__, no code run
    initialized = False

    def __getattr__(name: str):
        nonlocal initialized
        if name.startswith("__") and name != "__version__":
            raise AttributeError(name)  # probes such as __wrapped__ must not pull in all of hivemind
        try:
            return importlib.import_module(f"hivemind.{name}")  # a submodule: no need for __init__
        except ModuleNotFoundError as e:
            if e.name != f"hivemind.{name}":
                raise
        if not initialized:
            initialized = True
            spec.loader.exec_module(package)  # the real __init__, into the same module object
        if name in package.__dict__:
            return package.__dict__[name]
        raise AttributeError(f"module 'hivemind' has no attribute {name!r}")

    package.__getattr__ = __getattr__
    sys.modules["hivemind"] = package


_install()
