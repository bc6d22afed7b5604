"""int8 KV cache: a tiny random model computes nearly what the full-precision cache gives,
for prefill and decode, with rollback, in a quarter of fp32's memory."""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.kv_cache import Int8KVCache, KVCache, kv_bytes_per_token
from swarmllm.models.config import ModelConfig
from swarmllm.weights.types import BlockWeights

D, I, H, KV, HD = 64, 96, 4, 2, 16


def tiny_span(n_blocks: int = 3, sliding: bool = False) -> SpanModel:
    config = ModelConfig(family="llama", n_blocks=n_blocks, hidden_size=D, intermediate_size=I, n_heads=H,
                         n_kv_heads=KV, head_dim=HD, vocab_size=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                         context_length=256, sliding_window=5 if sliding else None,
                         sliding_window_pattern=2 if sliding else 0)
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.randn(*shape, generator=g) / shape[-1] ** 0.5

    blocks = [BlockWeights(index=i, attn_norm=torch.ones(D), q=w(H * HD, D), k=w(KV * HD, D), v=w(KV * HD, D),
                           o=w(D, H * HD), ffn_norm=torch.ones(D), gate=w(I, D), up=w(I, D), down=w(D, I))
              for i in range(n_blocks)]
    return SpanModel(config, blocks, 0, n_blocks)


@pytest.mark.parametrize("sliding", [False, True])
def test_int8_cache_output_close_to_full_precision(sliding):
    span = tiny_span(sliding=sliding)
    hidden = torch.randn(1, 24, D, generator=torch.Generator().manual_seed(1))
    exact, quantized = span.new_cache(32), span.new_cache(32, kv_dtype="int8")
    assert isinstance(quantized, Int8KVCache) and type(exact) is KVCache
    outputs = {}
    for name, cache in (("exact", exact), ("int8", quantized)):
        steps = [span(hidden[:, :10], cache, 0)]  # prefill, then decode one position at a time
        steps += [span(hidden[:, p:p + 1], cache, p) for p in range(10, 24)]
        outputs[name] = torch.cat(steps, dim=1)
    error = (outputs["int8"] - outputs["exact"]).norm() / outputs["exact"].norm()
    assert 0 < error < 0.01


def test_int8_cache_rolls_back_and_recomputes_identically():
    span = tiny_span()
    hidden = torch.randn(1, 12, D, generator=torch.Generator().manual_seed(2))
    cache = span.new_cache(16, kv_dtype="int8")
    span(hidden[:, :8], cache, 0)
    first = span(hidden[:, 8:12], cache, 8)
    cache.truncate(8)
    assert torch.equal(span(hidden[:, 8:12], cache, 8), first)


def test_int8_cache_memory():
    span = tiny_span()
    fp32 = span.new_cache(100)
    int8 = span.new_cache(100, kv_dtype="int8")
    assert int8.nbytes == kv_bytes_per_token(span.config, 3, torch.float32, "int8") * 100
    assert fp32.nbytes == kv_bytes_per_token(span.config, 3, torch.float32) * 100
    assert int8.nbytes / fp32.nbytes == pytest.approx((HD + 4) / (HD * 4))  # 0.31 at hd=16; 0.27 at hd=64
    with pytest.raises(ValueError, match="int8"):
        span.new_cache(8, kv_dtype="int4")


def test_server_budget_admits_more_positions_with_int8_cache():
    from swarmllm.server.backend import SpanBackend
    from swarmllm.server.node import ServerConfig, ServerNode

    span = tiny_span()
    node = ServerNode(ServerConfig(model="tiny", cache_memory_bytes=2**20))
    free = {kv: node._new_table(SpanBackend("tiny", span.config, span, torch.float32, kv), 0, 3).free_tokens
            for kv in ("auto", "int8")}
    int8_backend = SpanBackend("tiny", span.config, span, torch.float32, "int8")
    assert isinstance(int8_backend.new_cache(0, 3, 8), Int8KVCache)
    assert free["int8"] > 2 * free["auto"]  # fp32 compute: 20 vs 64 bytes per head and position (+ history)
