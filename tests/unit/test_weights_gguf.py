"""GGUF reader: span loading touches only the span's tensors; config and orientation."""

from __future__ import annotations

import pytest
import torch

from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, load_head, read_config, record_dequantized
from swarmllm.weights.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def smollm():
    source = resolve_model("smollm2-135m")
    return source, read_config(source)


def test_smollm2_config(smollm):
    _, config = smollm
    assert (config.family, config.n_blocks, config.hidden_size) == ("llama", 30, 576)
    assert (config.n_heads, config.n_kv_heads, config.head_dim) == (9, 3, 64)
    assert config.rope_theta == 1e5 and config.tie_embeddings and config.eos_token_ids == (2,)


def test_span_loading_dequantizes_only_the_span(smollm):
    source, config = smollm
    with record_dequantized() as names:
        blocks = load_blocks(source, config, 10, 12)
    assert [b.index for b in blocks] == [10, 11]
    assert names and all(name.startswith(("blk.10.", "blk.11.")) for name in names)
    assert len(names) == 2 * 9
    b = blocks[0]
    assert b.q.shape == (576, 576) and b.k.shape == (192, 576) and b.down.shape == (576, 1536)
    assert b.gate.dtype == torch.float32


def test_head_loading_reads_only_head_tensors(smollm):
    source, config = smollm
    with record_dequantized() as names:
        head = load_head(source, config, torch.bfloat16)
    assert set(names) == {"token_embd.weight", "output_norm.weight"}
    assert head.lm_head is head.embed and head.embed.shape == (49152, 576) and head.embed.dtype == torch.bfloat16


def test_gguf_file_parses_header(smollm):
    source, _ = smollm
    file = GGUFFile(source.path)
    assert file.metadata["general.architecture"] == "llama"
    assert len(file.metadata["tokenizer.ggml.tokens"]) == 49152
    assert file.tensors["blk.0.attn_q.weight"].hf_shape == (576, 576)


def test_gemma3_config():
    config = read_config(resolve_model("gemma3-270m"))
    assert (config.family, config.n_blocks, config.hidden_size, config.head_dim) == ("gemma3", 18, 640, 256)
    assert config.sliding_window == 512 and config.rope_local_theta == 10000.0 and config.rope_theta == 1e6
    assert [i for i in range(18) if not config.is_sliding(i)] == [5, 11, 17]
    assert config.qk_norm and config.sandwich_norms and config.activation == "gelu_tanh"
    assert config.eos_token_ids == (1, 106)
