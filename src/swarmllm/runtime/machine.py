"""What this machine has: CPU, memory, GPUs and free disk, for `swarmllm volunteer` and `setup --web`.

`detect_machine()` reads local facts only (no network, no model loading): the CPU's model name,
cores and the instruction-set extensions the kernels care about, total and available memory,
the GPUs torch can see (CUDA, ROCm through torch's HIP build, Apple's MPS) with their memory,
and the free space where the state and downloads live. Every probe that fails (a missing
/proc file, a GPU driver that raises) leaves its field empty or zero instead of failing: a
volunteer must never be turned away because an optional probe broke.

What it does not do: decide what to serve (volunteer/plan.py does, purely, from a `Machine`),
or benchmark anything (the node measures its own throughput once its span is loaded).
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

import psutil

# The ISA extensions worth naming: what the kernels dispatch on (runtime/compute_class.py) and
# what decides whether bfloat16 is native (engine/dtypes.py).
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


@dataclass(frozen=True)
class Gpu:
    name: str                    # "NVIDIA H100 80GB HBM3", "Apple M2", ...
    backend: str                 # "cuda" | "rocm" | "mps"
    memory_bytes: int            # total (for mps: the unified memory torch may use)
    free_bytes: Optional[int]    # None where the driver does not say


@dataclass(frozen=True)
class Machine:
    os: str                      # "Linux 6.1.0 x86_64"
    cpu_model: str
    physical_cores: int
    logical_cores: int
    isa: tuple[str, ...]         # e.g. ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "neon")
    memory_bytes: int
    available_bytes: int
    gpus: tuple[Gpu, ...]
    disk_path: str               # where the state folder and downloads are
    disk_free_bytes: int

    def to_json(self) -> dict:
        data = asdict(self)
        data["isa"] = list(self.isa)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); {} elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def _cpu_model(info: dict[str, str]) -> str:
    for key in ("model name", "hardware", "processor"):
        if info.get(key) and not info[key].isdigit():
            return info[key]
    if platform.system() == "Darwin":
        try:
            import subprocess
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, ValueError):
            pass
    return platform.processor() or platform.machine()


def _isa(info: dict[str, str]) -> tuple[str, ...]:
    flags = set((info.get("flags") or info.get("features") or "").split())
    if platform.machine().lower() in ("arm64", "aarch64"):
        flags.add("neon")  # every 64-bit ARM core has it
    return tuple(flag for flag in _ISA_FLAGS if flag in flags)


def _gpus() -> tuple[Gpu, ...]:
    """The GPUs torch can use. Imports torch lazily: detection without a GPU stack stays cheap."""
    try:
        import torch
    except ImportError:
        return ()
    found: list[Gpu] = []
    try:
        if torch.cuda.is_available():
            backend = "rocm" if getattr(torch.version, "hip", None) else "cuda"
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                try:
                    free, _total = torch.cuda.mem_get_info(index)
                except RuntimeError:
                    free = None
                found.append(Gpu(props.name, backend, int(props.total_memory), free))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            limit = getattr(torch.mps, "recommended_max_memory", None)
            memory = int(limit()) if callable(limit) else psutil.virtual_memory().total
            found.append(Gpu(f"Apple {platform.machine()} GPU", "mps", memory, None))
    except Exception:  # a broken driver must not stop a volunteer: then it serves on the CPU
        return tuple(found)
    return tuple(found)


def detect_machine(disk_path: Optional[str] = None) -> Machine:
    """This machine's facts; `disk_path` is where downloads go (default: the state folder)."""
    from swarmllm.state import state_dir

    path = disk_path or str(state_dir())
    probe = path
    while probe and not os.path.exists(probe):  # the folder may not exist yet: measure its parent's disk
        probe = os.path.dirname(probe.rstrip(os.sep)) or os.sep
    try:
        free = shutil.disk_usage(probe or os.sep).free
    except OSError:
        free = 0
    info = _cpuinfo()
    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    return Machine(
        os=f"{platform.system()} {platform.release()} {platform.machine()}".strip(),
        cpu_model=_cpu_model(info), physical_cores=psutil.cpu_count(logical=False) or logical,
        logical_cores=logical, isa=_isa(info), memory_bytes=int(memory.total),
        available_bytes=int(memory.available), gpus=_gpus(), disk_path=path, disk_free_bytes=int(free))
