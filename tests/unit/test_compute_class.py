"""Compute classes: two servers of one class compute the same bytes for the same step, whatever
else they batch with (batched steps, speculative verify steps, rollbacks, long prefills), so
receipts and verification can compare their outputs' hashes; and the class names what decides it.

The spans are real smollm2-135m blocks loaded twice, as two servers load them (separate weight
tensors), in float32, the compute dtype two servers of one class most often share on CPUs
without native bf16. Random-weight toy shapes would not exercise the GEMM kernel paths that
make rows depend on their call (engine/row_tiles.py).
"""

from __future__ import annotations

import pytest
import torch

from signed_records import envelope, server_record
from swarmllm.engine.blocks import SequenceStep
from swarmllm.protocol import ComputeClass, block_key, encode_tensor
from swarmllm.protocol.envelope import MAX_RECORD_BYTES
from swarmllm.protocol.receipts import digest
from swarmllm.runtime import load_span
from swarmllm.runtime.compute_class import compute_class_of, isa_class
from swarmllm.swarm.identity import Identity

MODEL, SPAN = "smollm2-135m", (0, 8)
D = 576
# Session X's steps (start position, positions): a long prefill (one call of its own), a decode step,
# a speculative verify step of 5, a rollback after 3 rejected drafts re-verifying 4, decode, a short prompt-sized step.
X_STEPS = [(0, 23), (23, 1), (24, 5), (26, 4), (30, 1), (31, 12)]


@pytest.fixture(scope="module")
def servers():
    """Two separately loaded copies of the same span: server A and server B."""
    return load_span(MODEL, *SPAN, "float32"), load_span(MODEL, *SPAN, "float32")


def companions(rng: torch.Generator, round_: int) -> list[tuple[int, int]]:
    """Other sessions' steps sharing a batch: prompts, decode steps and verify steps of varying size."""
    sizes = [1, 3, 1, 7, 16, 2, 1, 20][round_ % 4: round_ % 4 + 3 + round_ % 3]
    return [(0, n) for n in sizes]


def test_two_servers_of_one_class_compute_identical_bytes_whatever_they_batch_with(servers):
    server_a, server_b = servers
    assert compute_class_of(server_a) == compute_class_of(server_b)
    rng = torch.Generator().manual_seed(12)
    inputs = torch.randn(48, D, generator=rng)  # X's hidden states per position (what block 0 gets)
    cache_a, cache_b = server_a.new_cache(64), server_b.new_cache(64)
    for round_, (start, n) in enumerate(X_STEPS):
        x = inputs[start:start + n]
        # A: X inside a batch of other sessions' steps (fresh caches each round), at a different place each round.
        others = [SequenceStep(torch.randn(m, D, generator=rng), server_a.new_cache(64), p)
                  for p, m in companions(rng, round_)]
        place = round_ % (len(others) + 1)
        batch = others[:place] + [SequenceStep(x, cache_a, start)] + others[place:]
        out_a = server_a.forward_many(batch)[place]
        # B: X alone on its own server (a decode server with nothing else to do, or a replica).
        out_b = server_b(x[None], cache_b, start)[0]
        assert torch.equal(out_a, out_b), f"step {round_} ({n} positions at {start}): max diff " \
                                          f"{(out_a - out_b).abs().max():.3g}"
        # ... so their receipts' output hashes agree too (the bytes a receipt hashes).
        assert digest(encode_tensor(out_a[None], "float32")[1]) == digest(encode_tensor(out_b[None], "float32")[1])


def test_a_batch_of_verify_steps_equals_each_verify_step_on_another_server(servers):
    """Speculative decoding on several sessions at once: k-position verify steps batched on A, one
    session at a time on B, after identical histories."""
    server_a, server_b = servers
    rng = torch.Generator().manual_seed(3)
    histories = [torch.randn(n, D, generator=rng) for n in (5, 17, 9)]
    drafts = [torch.randn(k, D, generator=rng) for k in (4, 8, 2)]
    caches_a = [server_a.new_cache(64) for _ in histories]
    caches_b = [server_b.new_cache(64) for _ in histories]
    server_a.forward_many([SequenceStep(h, c, 0) for h, c in zip(histories, caches_a)])
    for h, c in zip(histories, caches_b):
        server_b(h[None], c, 0)
    batched = server_a.forward_many([SequenceStep(d, c, len(h)) for d, h, c in zip(drafts, histories, caches_a)])
    for d, h, c, out in zip(drafts, histories, caches_b, batched):
        assert torch.equal(out, server_b(d[None], c, len(h))[0])


def test_the_class_names_what_decides_the_bits_and_its_key_is_stable():
    base = ComputeClass(compute_dtype="float32", software_version="0.1.0", torch_version="2.13.0+cpu",
                        torch_build="cf30153c4c13", isa="avx2-amd", row_tile=1, threads=2)
    assert base.key == "float32.none.auto.avx2-amd.r1.t2." + base.key.rsplit(".", 1)[1]
    assert base.key == ComputeClass.model_validate_json(base.model_dump_json()).key  # stable across processes
    variants = [{"compute_dtype": "bfloat16"}, {"weight_quant": "int8"}, {"kv_dtype": "int8"}, {"threads": 1},
                {"row_tile": 4}, {"isa": "avx512-bf16-intel"}, {"torch_version": "2.14.0+cpu"},
                {"torch_build": "0123456789ab"}, {"software_version": "0.2.0"}]
    keys = {base.model_copy(update=change).key for change in variants}
    assert len(keys) == len(variants) and base.key not in keys


def test_a_server_detects_its_class_from_what_it_loaded(servers):
    detected = compute_class_of(servers[0], "int8")
    assert (detected.compute_dtype, detected.weight_quant, detected.kv_dtype) == ("float32", "none", "int8")
    assert detected.threads == torch.get_num_threads() and detected.row_tile == servers[0].row_tile
    assert detected.isa == isa_class() and detected.isa.split("-")[0] == torch.backends.cpu.get_cpu_capability().lower()
    assert detected.torch_version == torch.__version__


def test_a_signed_record_with_its_class_stays_far_below_the_size_limit():
    identity = Identity.generate()
    longest = ComputeClass(compute_dtype="bfloat16", weight_quant="int4", kv_dtype="int8", software_version="9" * 48,
                           torch_version="9" * 48, torch_build="f" * 12, isa="x" * 48, row_tile=64, threads=4096)
    record = server_record(identity, compute_class=longest, addresses=tuple(f"/ip4/203.0.113.{i}/tcp/31337/p2p/"
                                                                            f"{identity.peer_id}" for i in range(8)))
    value = envelope(identity, block_key("m", 3), record)
    assert len(value["body"]) < 2048 and len(str(value)) < MAX_RECORD_BYTES
    assert record.compute_dtype == "bfloat16" and record.quant == "int4" and record.kv_dtype == "int8"
