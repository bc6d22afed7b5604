"""When two servers' outputs of the same step agree: bit for bit, or within the measured tolerance.

docs/verification.md derives the rule from `benchmarks/compute_classes.py`: outputs of one compute
class computed in the same chunks are byte-identical, so they must be equal; otherwise (another
class, or the same positions computed in other chunks, whose rows round differently) row r of a
and b agree when

    max |a_r - b_r| <= 2 (eps_A + eps_B) max |a_r|

with eps of a class the worst relative error against float32 measured for what it differs in
(compute dtype, weight quantization, KV dtype), plus what the wire format rounds away. A row
with a NaN or an infinity never agrees. Pure functions of tensors and class keys.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

# Worst hidden max rel error against float32 over both bundled models (compute_classes.md).
EPS_FLOAT32 = 3.2e-6          # float32 at another thread count (and other chunks: 5.7e-7 measured)
EPS_COMPUTE = {"float32": 0.0, "bfloat16": 5.5e-2, "float16": 5.5e-2}
EPS_WEIGHTS = {"none": 0.0, "int8": 2.4e-1, "int4": 2.6e-1}
EPS_KV = {"auto": 0.0, "int8": 8.3e-2}
EPS_WIRE = {"float32": 0.0, "float16": 5e-4, "bfloat16": 4e-3, "int8": 1e-2}  # one rounding of the values
UNKNOWN_EPS = 3e-1            # a part this version has not measured: the loosest measured


def class_epsilon(class_key: str) -> float:
    """eps of a compute class from its key ("float32.none.auto.avx2-amd.r1.t2.<hash>")."""
    parts = class_key.split(".")
    if len(parts) < 3:
        return UNKNOWN_EPS
    dtype, weights, kv = parts[:3]
    return EPS_FLOAT32 + EPS_COMPUTE.get(dtype, UNKNOWN_EPS) + EPS_WEIGHTS.get(weights, UNKNOWN_EPS) + \
        EPS_KV.get(kv, UNKNOWN_EPS)


def tolerance(classes_a: Iterable[str], classes_b: Iterable[str], wire_dtype: str = "float32") -> float:
    """The relative tolerance between two computations of a span, by the classes of the servers that
    computed each (a span may be computed by several servers in a row: their eps add up)."""
    eps = sum(class_epsilon(c) for c in classes_a) + sum(class_epsilon(c) for c in classes_b)
    return 2.0 * (eps + 2 * EPS_WIRE.get(wire_dtype, UNKNOWN_EPS))


def exact_comparison(classes_a: Iterable[str], classes_b: Iterable[str], same_chunks: bool) -> bool:
    """Whether the two computations must be byte-identical: every server of one class (and known), and
    the positions computed in the same chunks."""
    keys = set(classes_a) | set(classes_b)
    return same_chunks and len(keys) == 1 and "" not in keys


# Largest top-1 lead seen at an honest disagreement, x2 (docs/verification.md), for a head of this dtype / quant
TOKEN_MARGIN = {"float32": 0.0, "bfloat16": 0.13, "float16": 0.13}
TOKEN_MARGIN_WEIGHTS = {"none": 0.0, "int8": 0.51, "int4": 3.4}


def token_agrees(logits: torch.Tensor, expected: int, token: int, class_key: str) -> bool:
    """Whether a server of `class_key` may honestly have picked `token` where the client's head over the
    same hidden states picks `expected` (logits: the client's, float32): the same token, or (another
    class) one whose logit is within that class's measured margin of the expected one's."""
    if token == expected:
        return True
    if not 0 <= token < logits.numel():
        return False
    parts = class_key.split(".")
    dtype, weights = (parts + ["", ""])[:2]
    margin = TOKEN_MARGIN.get(dtype, 3.4) + TOKEN_MARGIN_WEIGHTS.get(weights, 3.4)
    logits = logits.float().reshape(-1)
    return margin > 0 and float(logits[expected] - logits[token]) <= margin


def first_disagreement(a: torch.Tensor, b: torch.Tensor, exact: bool, rel_tolerance: float) -> Optional[int]:
    """Index of the first row of a, b [T, D] that does not agree (None if all do)."""
    if a.shape != b.shape:
        return 0
    a, b = a.float(), b.float()
    if exact:
        same = (a == b).all(dim=-1)
    else:
        scale = a.abs().amax(dim=-1)
        same = (a - b).abs().amax(dim=-1) <= rel_tolerance * scale  # NaN compares False: never agrees
        same &= torch.isfinite(a).all(dim=-1) & torch.isfinite(b).all(dim=-1)
    bad = (~same).nonzero()
    return int(bad[0, 0]) if len(bad) else None
