"""Tiny random-weight checkpoints of every family, written the way real ones are published.

The family exact-match tests (test_families_exact.py) and docs/porting.md use this module:

    model = tiny_model("qwen2")                     # a transformers model, fixed seed, random weights
    folder = save_safetensors(model, tmp_path / "st")   # save_pretrained + a byte-level tokenizer
    path = save_gguf(model, tmp_path / "m.gguf")        # GGUFWriter, llama.cpp names and metadata keys

The GGUF side is written independently of swarmllm's own name maps: tensor names come from
the `gguf` package's `get_tensor_name_map` (the table llama.cpp's convert_hf_to_gguf.py uses),
metadata keys from GGUFWriter's `add_*` methods, and the per-architecture transforms are
llama.cpp's converter's (q/k row permutation for "llama", Gemma's `1 + w` norms, Phi-3's
fused tensors kept fused). So a wrong entry in swarmllm's registry fails the test instead of
being mirrored by it.

Every parameter is randomized (norms around their identity value, biases non-zero), so a
tensor read from the wrong place, with the wrong offset or not at all changes the logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

VOCAB = 320  # 256 byte-level tokens + 64 control tokens; EOS is the first control token
EOS_ID = 256

# Shared tiny shape: 4 heads over 2 KV heads (GQA), head_dim 16, 3-4 layers.
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
               eos_token_id=EOS_ID, bos_token_id=None, pad_token_id=None)


def _llama(**kw: Any):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**{**_COMMON, "num_hidden_layers": 3, "rope_theta": 10000.0,
                                           "tie_word_embeddings": False, **kw}))


def _mistral(**kw: Any):
    from transformers import MistralConfig, MistralForCausalLM

    # sliding_window=None as in Mistral v0.2+ (llama.cpp's "llama" GGUFs carry no window);
    # test_families_exact passes a small window to exercise it from safetensors.
    return MistralForCausalLM(MistralConfig(**{**_COMMON, "num_hidden_layers": 3, "rope_theta": 1e6,
                                               "sliding_window": None, "tie_word_embeddings": False, **kw}))


def _qwen2(**kw: Any):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**{**_COMMON, "num_hidden_layers": 3, "rope_theta": 1e6,
                                           "tie_word_embeddings": True, **kw}))


def _qwen3(**kw: Any):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # head_dim != hidden / heads, as in real Qwen3 (0.6B: 1024 hidden, 16 heads, head_dim 128)
    return Qwen3ForCausalLM(Qwen3Config(**{**_COMMON, "num_hidden_layers": 3, "head_dim": 32, "rope_theta": 1e6,
                                           "tie_word_embeddings": False, **kw}))


def _phi3(**kw: Any):
    from transformers import Phi3Config, Phi3ForCausalLM

    # partial rotary (only half of each head rotates) and a sliding window shorter than the test
    # prompt, so both are exercised; Phi-3-mini itself has full rotary and a 2047 window.
    return Phi3ForCausalLM(Phi3Config(**{**_COMMON, "num_hidden_layers": 3, "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.5, "sliding_window": 6,
                                         "tie_word_embeddings": False, **kw}))


def _gemma3(**kw: Any):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # llama.cpp hard-codes Gemma 3's pattern (every 6th layer global) and scale (head_dim), so the
    # GGUF-compatible tiny model has 6 layers with that pattern.
    config = Gemma3TextConfig(**{**_COMMON, "num_hidden_layers": 6, "head_dim": 16, "sliding_window": 5,
                                 "query_pre_attn_scalar": 16, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
                                 "layer_types": ["sliding_attention"] * 5 + ["full_attention"], **kw})
    return Gemma3ForCausalLM(config)


MAKERS: dict[str, Callable[..., Any]] = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "phi3": _phi3, "gemma3": _gemma3,
}

# family -> (llama.cpp architecture, tokenizer.ggml.pre)
GGUF_ARCH = {
    "llama": ("llama", "smollm"), "mistral": ("llama", "default"), "qwen2": ("qwen2", "qwen2"),
    "qwen3": ("qwen3", "qwen2"), "phi3": ("phi3", "default"), "gemma3": ("gemma3", "default"),
}


def tiny_model(family: str, seed: int = 0, fp16_weights: bool = False, **config_overrides: Any):
    """A transformers model of `family` with random weights (fixed seed), in eval mode.

    fp16_weights rounds every matrix to float16 (kept as float32), so a GGUF written in F16 holds
    exactly the reference's weights.
    """
    torch.manual_seed(seed)
    model = MAKERS[family](**config_overrides).eval()
    norm_mean = 0.0 if family == "gemma3" else 1.0  # Gemma stores w of (1 + w)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(norm_mean, 0.2)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.5)
            else:
                param.normal_(0.0, 0.15)  # larger than HF's init: well separated logits, no argmax ties
            if fp16_weights and param.dim() == 2:
                param.copy_(param.half().float())
    return model


# --- tokenizer (byte-level, no merges): enough for LocalModel.load and decode --------------
def _tokens() -> list[str]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return alphabet + [f"<|t{i}|>" for i in range(VOCAB - len(alphabet))]


def _write_tokenizer_json(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = _tokens()
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[256:]])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": tokens[EOS_ID]}))


def save_safetensors(model, folder: Path) -> Path:
    """save_pretrained (config.json + model.safetensors) plus a tokenizer.json."""
    folder = Path(folder)
    model.save_pretrained(folder)
    _write_tokenizer_json(folder)
    return folder


# --- GGUF, the way llama.cpp's convert_hf_to_gguf.py writes it ------------------------------
def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute: HF rotate_half row order -> GGML interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_metadata(writer, family: str, cfg) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if family in ("llama", "mistral"):
        writer.add_rope_dimension_count(head_dim)
    if family in ("qwen3", "gemma3"):  # config.json has head_dim: convert_hf_to_gguf writes key/value length
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if family == "phi3":
        rot_pct = rope.get("partial_rotary_factor", 1.0)
        writer.add_rope_dimension_count(int(rot_pct * cfg.hidden_size) // cfg.num_attention_heads)
        writer.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
        writer.add_sliding_window(cfg.sliding_window or 0)
    if family == "gemma3":
        writer.add_sliding_window(cfg.sliding_window)
        if cfg.final_logit_softcapping:
            writer.add_final_logit_softcapping(cfg.final_logit_softcapping)


def _write_tokenizer_metadata(writer, family: str) -> None:
    import gguf

    tokens = _tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_ARCH[family][1])
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * (len(tokens) - 256))
    writer.add_token_merges([])
    writer.add_eos_token_id(EOS_ID)


def save_gguf(model, path: Path, matrix_type: str = "F32") -> Path:
    """Write `model` as a GGUF (F32 or F16 matrices; 1-D tensors stay F32, as llama.cpp keeps them)."""
    import gguf

    family = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
              "gemma3_text": "gemma3"}[model.config.model_type]
    cfg = model.config
    arch_name = GGUF_ARCH[family][0]
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch_name)
    _write_metadata(writer, family, cfg)
    _write_tokenizer_metadata(writer, family)
    state = model.state_dict()
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise AssertionError(f"llama.cpp's tensor map has no name for {hf_name} ({arch_name})")
        data = tensor.detach().float()
        if arch_name == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, cfg.num_attention_heads)
        if arch_name == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, cfg.num_key_value_heads)
        if family == "gemma3" and hf_name.endswith("norm.weight"):
            data = data + 1.0
        array = data.numpy()
        if matrix_type == "F16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
