"""A loaded span's compute class: everything that decides its outputs bit for bit.

`compute_class_of(span, kv_dtype)` is what a server announces (protocol ComputeClass):
- compute dtype, weight quantization and KV-cache storage: what the numbers are;
- swarmllm's version, torch's version with its build suffix and git commit (torch ships its
  own MKL and oneDNN, so these pin the kernel libraries too);
- the ISA class the kernels dispatch on (`isa_class`): torch's CPU capability (AVX512, AVX2,
  ...), "-bf16" where the CPU multiplies bfloat16 natively (oneDNN then takes another path),
  the CPU vendor (MKL chooses code paths by vendor) and MKL's CNR mode when MKL_CBWR is set;
  on a CUDA device "cuda-sm<major><minor>";
- the span's row tile (engine/row_tiles.py, chosen by a deterministic self-check) and torch's
  intra-op thread count. The thread count is there because it was measured to matter: with
  torch 2.13 on this AMD EPYC (AVX2), a float32 decode step through smollm2-135m's 30 blocks
  differs by up to 9e-5 between 1 and 2 threads (MKL's matrix-vector kernel splits its sums
  between threads), while bfloat16 and prefills of 17+ rows did not differ.

Classes are deliberately fine-grained: a class must never contain two honest servers whose
outputs differ, or exact comparison would accuse one of them. Outputs of different classes are
compared within the tolerance of docs/verification.md instead.
"""

from __future__ import annotations

import os
import re

import torch

from swarmllm import __version__
from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.dtypes import cpu_has_native_bf16, dtype_name
from swarmllm.protocol.records import ComputeClass

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _clean(text: str, limit: int = 48) -> str:
    return _UNSAFE.sub("-", text)[:limit]


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            line = next((line for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""
    vendor = line.partition(":")[2].strip()
    return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, _clean(vendor.lower(), 12))


def isa_class(device: str | torch.device = "cpu") -> str:
    """The kernel path of `device`, e.g. "avx2-amd", "avx512-bf16-intel", "cuda-sm90"."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    parts = [torch.backends.cpu.get_cpu_capability().lower()]
    if cpu_has_native_bf16():
        parts.append("bf16")
    vendor = _cpu_vendor()
    if vendor:
        parts.append(vendor)
    if os.environ.get("MKL_CBWR"):
        parts.append("cbwr-" + os.environ["MKL_CBWR"].lower())
    return _clean("-".join(parts))


def compute_class_of(span: SpanModel, kv_dtype: str = "auto", device: str | torch.device = "cpu") -> ComputeClass:
    """The compute class of `span` as loaded here, with its KV storage ("auto" or "int8")."""
    return ComputeClass(
        compute_dtype=dtype_name(span.dtype), weight_quant=span.quant, kv_dtype=kv_dtype,
        software_version=_clean(__version__), torch_version=_clean(torch.__version__),
        torch_build=_clean((torch.version.git_version or "")[:12]), isa=isa_class(device),
        row_tile=span.row_tile, threads=torch.get_num_threads())
