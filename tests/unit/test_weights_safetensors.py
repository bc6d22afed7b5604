"""Tiny random-weight HF checkpoints (Llama, Llama 3 rope scaling, Gemma 3 with a small sliding
window) saved as safetensors, loaded through swarmllm.weights, must match transformers."""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.head import ModelHead
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, load_head, read_config


def tiny_llama(rope_scaling=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, rope_scaling=rope_scaling,
    )
    return LlamaForCausalLM(config)


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, vocab_size=128, max_position_embeddings=256, sliding_window=5, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=30.0,
    )
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # random norms so the (1 + w) convention is exercised
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    return model


def ours_vs_hf(model, tmp_path, ids: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = model.eval()
    model.save_pretrained(tmp_path)
    source = resolve_model(str(tmp_path))
    assert source.format == "safetensors"
    config = read_config(source)
    head = ModelHead(config, load_head(source, config))
    # two spans, prompt prefill then token-by-token decode
    cut = config.n_blocks // 2
    spans = [SpanModel(config, load_blocks(source, config, a, b), a, b) for a, b in ((0, cut), (cut, config.n_blocks))]
    caches = [span.new_cache(64) for span in spans]

    def run(tokens: torch.Tensor, start: int) -> torch.Tensor:
        hidden = head.embed(tokens)
        for span, cache in zip(spans, caches):
            hidden = span(hidden, cache, start)
        return head.logits(hidden)

    with torch.inference_mode():
        expected = model(ids).logits
    prefill = 6
    outputs = [run(ids[:, :prefill], 0)]
    for i in range(prefill, ids.shape[1]):
        outputs.append(run(ids[:, i:i + 1], i))
    ours = torch.cat(outputs, dim=1)
    assert (ours - expected).abs().max().item() < 1e-4


IDS = torch.tensor([[3, 17, 99, 4, 56, 23, 8, 77, 12, 5, 41, 100, 9, 64]])


def test_tiny_llama_safetensors_matches_transformers(tmp_path):
    torch.manual_seed(0)
    ours_vs_hf(tiny_llama(), tmp_path, IDS)


def test_tiny_llama3_rope_scaling_matches_transformers(tmp_path):
    torch.manual_seed(1)
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    model = tiny_llama(scaling)
    assert read_config_after_save(model, tmp_path).rope_scaling.type == "llama3"
    ours_vs_hf(model, tmp_path, IDS)


def read_config_after_save(model, tmp_path):
    model.save_pretrained(tmp_path)
    return read_config(resolve_model(str(tmp_path)))


def test_tiny_gemma3_sliding_window_matches_transformers(tmp_path):
    torch.manual_seed(2)
    model = tiny_gemma3()
    config = read_config_after_save(model, tmp_path)
    assert config.family == "gemma3" and config.sliding_window == 5
    assert [config.is_sliding(i) for i in range(4)] == [True, False, True, False]
    ours_vs_hf(model, tmp_path, IDS)  # 14 tokens > window 5: the window is exercised


def test_bad_span_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    config = read_config_after_save(tiny_llama(), tmp_path)
    with pytest.raises(ValueError, match="invalid for a model with 3 blocks"):
        load_blocks(resolve_model(str(tmp_path)), config, 2, 5)
