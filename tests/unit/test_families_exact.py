"""Every family vs transformers: tiny random-weight checkpoints, safetensors and GGUF (F32, F16).

The definition of done for a family (docs/porting.md): our whole-model engine (LocalModel),
loaded from each format, gives logits within 1e-4 (relative to the largest logit) of the
transformers implementation on a 14-token prompt, the same greedy tokens as transformers'
`generate` (prefill + token-by-token decode through the KV cache), and the model split into
two spans chained in-process gives what the whole model gives.
"""

from __future__ import annotations

import pytest
import torch

from swarmllm.engine.blocks import SequenceStep, SpanModel
from swarmllm.engine.generation import generate
from swarmllm.runtime import LocalModel
from swarmllm.engine.sampling import SamplingParams
from swarmllm.models.catalog import resolve_model
from swarmllm.models.registry import config_from_gguf, config_from_hf
from swarmllm.weights import load_blocks, read_config
from tiny_checkpoints import EOS_ID, MAKERS, save_gguf, save_safetensors, tiny_model

IDS = [3, 17, 99, 4, 56, 23, 8, 77, 12, 5, 41, 100, 9, 64]
NEW_TOKENS = 8
FORMATS = ("safetensors", "gguf-f32", "gguf-f16")


class NoEos:
    """Tokenizer view without EOS so both sides generate exactly NEW_TOKENS tokens."""

    eos_token_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer) -> None:
        self.decode = tokenizer.decode


def save(model, fmt: str, tmp_path) -> str:
    if fmt == "safetensors":
        return str(save_safetensors(model, tmp_path / "model"))
    return str(save_gguf(model, tmp_path / "model.gguf", "F16" if fmt == "gguf-f16" else "F32"))


def hf_reference(model, ids: list[int], n: int) -> tuple[torch.Tensor, list[int]]:
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=0, eos_token_id=None)
    return logits, out[0, len(ids):].tolist()


def assert_matches_transformers(model, path: str, ids: list[int] = IDS, n: int = NEW_TOKENS) -> LocalModel:
    """The exact-match check: logits and greedy tokens of LocalModel(path) == transformers(model)."""
    expected, hf_tokens = hf_reference(model, ids, n)
    ours_model = LocalModel.load(resolve_model(path), torch.float32, max_length=64)
    ours = ours_model.head.logits(ours_model.new_forward_fn()(ours_model.head.embed([ids]), 0))
    scale = expected.abs().max().item()
    assert (ours - expected).abs().max().item() < 1e-4 * scale
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))
    result = generate(ours_model.head, NoEos(ours_model.tokenizer), ours_model.new_forward_fn(), ids,
                      SamplingParams(max_new_tokens=n))
    assert result.token_ids == hf_tokens
    return ours_model


def assert_two_spans_equal_whole(local: LocalModel, path: str, ids: list[int] = IDS) -> None:
    """SpanModel [0, k) and [k, n) chained in-process == the whole model (distributed == local)."""
    source, config = resolve_model(path), local.config
    k = config.n_blocks // 2
    spans = [SpanModel(config, load_blocks(source, config, a, b), a, b) for a, b in ((0, k), (k, config.n_blocks))]
    caches = [span.new_cache(64) for span in spans]

    def chain(hidden: torch.Tensor, start: int) -> torch.Tensor:
        for span, cache in zip(spans, caches):
            hidden = span(hidden, cache, start)
        return hidden

    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    whole = generate(local.head, NoEos(local.tokenizer), local.new_forward_fn(), ids, params)
    split = generate(local.head, NoEos(local.tokenizer), chain, ids, params)
    assert split.token_ids == whole.token_ids
    for cache in caches:
        cache.truncate(0)
    hidden = local.head.embed([ids])
    assert torch.allclose(chain(hidden, 0), local.span(hidden, local.span.new_cache(64), 0), atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", list(MAKERS))
def test_family_matches_transformers(family, fmt, tmp_path):
    model = tiny_model(family, fp16_weights=fmt == "gguf-f16")
    path = save(model, fmt, tmp_path)
    local = assert_matches_transformers(model, path)
    assert local.config.family == ("llama" if (family, fmt[:4]) == ("mistral", "gguf") else family)
    assert local.tokenizer.eos_token_ids == (EOS_ID,)
    if fmt != "gguf-f16":
        assert_two_spans_equal_whole(local, path)


def test_mistral_sliding_window_matches_transformers(tmp_path):
    model = tiny_model("mistral", seed=1, sliding_window=5)  # 14-token prompt > window 5
    path = save(model, "safetensors", tmp_path)
    config = read_config(resolve_model(path))
    assert config.sliding_window == 5 and all(config.is_sliding(i) for i in range(config.n_blocks))
    local = assert_matches_transformers(model, path)
    assert_two_spans_equal_whole(local, path)


def test_family_configs_map_the_differences(tmp_path):
    """The config mapping carries each family's traits, from both formats alike."""
    expected = {  # family -> (qkv_bias, qk_norm, rotary_dim, sliding_window, tied, head_dim)
        "llama": (False, False, None, None, False, 16),
        "mistral": (False, False, None, None, False, 16),
        "qwen2": (True, False, None, None, True, 16),
        "qwen3": (False, True, None, None, False, 32),
        "phi3": (False, False, 8, 6, False, 16),
        "gemma3": (False, True, None, 5, True, 16),
    }
    for family, traits in expected.items():
        model = tiny_model(family)
        for fmt in ("safetensors", "gguf-f32"):
            config = read_config(resolve_model(save(model, fmt, tmp_path / f"{family}-{fmt}")))
            got = (config.qkv_bias, config.qk_norm, config.rotary_dim, config.sliding_window,
                   config.tie_embeddings, config.head_dim)
            assert got == traits, (family, fmt)


def test_qwen2_use_sliding_window_false_ignores_the_window():
    cfg = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "intermediate_size": 96, "vocab_size": 320, "sliding_window": 32768, "use_sliding_window": False,
           "max_window_layers": 21}
    assert config_from_hf(cfg).sliding_window is None
    with pytest.raises(ValueError, match="not periodic"):
        config_from_hf({**cfg, "num_hidden_layers": 4, "use_sliding_window": True, "max_window_layers": 2})


@pytest.mark.parametrize("rope", [
    {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 4.0},
])
def test_unsupported_rope_scaling_is_a_clear_error(rope):
    cfg = {"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "intermediate_size": 96, "vocab_size": 320, "rope_scaling": rope}
    with pytest.raises(ValueError, match=f"Rope scaling '{rope['rope_type']}' is not supported"):
        config_from_hf(cfg)


def test_unsupported_gguf_rope_scaling_is_a_clear_error():
    metadata = {"general.architecture": "phi3", "phi3.embedding_length": 64, "phi3.attention.head_count": 4,
                "phi3.block_count": 2, "phi3.feed_forward_length": 96}
    shapes = {"token_embd.weight": (320, 64), "rope_factors_long.weight": (8,), "rope_factors_short.weight": (8,)}
    with pytest.raises(ValueError, match="longrope"):
        config_from_gguf(metadata, shapes)
    with pytest.raises(ValueError, match="'yarn' is not supported"):
        config_from_gguf({**metadata, "phi3.rope.scaling.type": "yarn"}, {"token_embd.weight": (320, 64)})


def test_attention_bias_everywhere_is_refused():
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "intermediate_size": 96, "vocab_size": 320, "attention_bias": True}
    with pytest.raises(ValueError, match="attention_bias"):
        config_from_hf(cfg)


def test_qwen2_gguf_pretokenizer_splits_digits_one_by_one():
    """llama.cpp pre "qwen2" (Qwen2/2.5/3 GGUFs): digits never merge, unlike the default split."""
    from swarmllm.weights.gguf_vocab import backend_from_gguf
    from tiny_checkpoints import _tokens

    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": _tokens() + ["12"],
                "tokenizer.ggml.merges": ["1 2"]}
    merged = backend_from_gguf({**metadata, "tokenizer.ggml.pre": "default"}).encode("a 12").tokens
    split = backend_from_gguf({**metadata, "tokenizer.ggml.pre": "qwen2"}).encode("a 12").tokens
    assert "12" in merged and "12" not in split


@pytest.mark.parametrize("family", list(MAKERS))
def test_bfloat16_steps_are_row_exact_and_close_to_float32(family, tmp_path):
    """bfloat16 takes its own RMSNorm route (engine/norm.py), q/k and sandwich norms included:
    per family, a short step equals the same positions sent one at a time bit for bit, a batch
    equals each sequence alone, and the output stays close to float32's."""
    source = resolve_model(save(tiny_model(family), "safetensors", tmp_path))
    config = read_config(source)
    spans = {dtype: SpanModel(config, load_blocks(source, config, 0, config.n_blocks, dtype), 0, config.n_blocks, dtype)
             for dtype in (torch.float32, torch.bfloat16)}
    span = spans[torch.bfloat16]
    g = torch.Generator().manual_seed(0)
    prompt, chunk = torch.randn(9, config.hidden_size, generator=g), torch.randn(5, config.hidden_size, generator=g)
    whole, single = span.new_cache(32), span.new_cache(32)
    for cache in (whole, single):
        span(prompt[None], cache, 0)
    out = span(chunk[None], whole, 9)
    singles = torch.cat([span(chunk[None, t:t + 1], single, 9 + t) for t in range(len(chunk))], dim=1)
    assert torch.equal(out, singles)
    alone = [span.forward_many([SequenceStep(x, span.new_cache(32), 0)])[0] for x in (prompt, chunk)]
    together = span.forward_many([SequenceStep(x, span.new_cache(32), 0) for x in (prompt, chunk)])
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    reference = spans[torch.float32](prompt[None], spans[torch.float32].new_cache(32), 0)
    error = (span(prompt[None], span.new_cache(32), 0).float() - reference).abs().max() / reference.abs().max()
    assert error < 0.03, error
