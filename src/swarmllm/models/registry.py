"""Family registry: per-family weight-name maps and config mappings, as data.

A `FamilySpec` says, for one model family, how GGUF and Hugging Face checkpoints name each
tensor *role* (q, k, v, o, gate, ..., or a fused "qkv" / "gate_up"), whether llama.cpp
permuted q/k rows, how HF stores RMSNorm weights, which `ModelConfig` fields every checkpoint
of the family has (`fixed`) and which fill what the metadata leaves out (`defaults`). The
readers in `swarmllm.weights` and the engine consume roles only, so adding a family means
adding one `FamilySpec` and, if needed, a few `ModelConfig` fields -- never a subclass or a
copy of the model code. docs/porting.md walks through it.

`config_from_gguf` and `config_from_hf` turn metadata (already parsed into plain Python
values by the caller) into a `ModelConfig`; they are family-agnostic and read the same keys
for every family (a key a family lacks is simply absent). Nothing here opens files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from swarmllm.models.config import ModelConfig, RopeScaling

# Tensor roles of one transformer block, in the order BlockWeights declares them.
BLOCK_ROLES = (
    "attn_norm", "q", "k", "v", "o", "ffn_norm", "gate", "up", "down",
    "q_norm", "k_norm", "post_attn_norm", "post_ffn_norm", "q_bias", "k_bias", "v_bias",
)
REQUIRED_ROLES = BLOCK_ROLES[:9]  # the rest exist only in some families (the engine checks what it needs)
NORM_ROLES = frozenset({"attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm"})
# Fused tensors some checkpoints store instead of their parts (rows concatenated in this order).
# A name map may list both a fused role and its parts: the readers use whichever the file has.
FUSED_ROLES = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
HEAD_ROLES = ("embed", "final_norm", "lm_head")

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class FamilySpec:
    """Static description of a model family (see module docstring)."""

    name: str
    gguf_architecture: str  # llama.cpp's `general.architecture` (and metadata key prefix)
    hf_model_types: tuple[str, ...]  # config.json `model_type` values
    gguf_block_names: Mapping[str, str]  # role -> name template with {i}
    hf_block_names: Mapping[str, str]
    gguf_head_names: Mapping[str, str]  # role -> tensor name
    hf_head_names: Mapping[str, str]
    gguf_permuted_qk: bool  # llama.cpp permuted q/k rows for its rotary layout
    hf_norm_offset: float  # HF stores w with multiplier (offset + w); GGUF stores the multiplier
    activation: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig fields true of every checkpoint
    defaults: Mapping[str, Any] = field(default_factory=dict)  # fields used when the checkpoint does not say
    scale_embeddings: bool = False  # token embeddings are multiplied by sqrt(hidden_size) (Gemma)
    hf_sliding_flag: str | None = None  # HF key that must be true for `sliding_window` to apply (Qwen)
    hf_tie_default: bool = False  # tie_word_embeddings when config.json leaves it out
    gguf_rope_dims_partial: bool = False  # GGUF rope.dimension_count may be < head_dim (partial rotary)
    default_chat_template: str | None = None
    extra_eos_tokens: tuple[str, ...] = ()  # token strings that also end a turn

    def block_tensor_names(self, fmt: str, index: int) -> dict[str, str]:
        names = self.gguf_block_names if fmt == "gguf" else self.hf_block_names
        return {role: template.format(i=index) for role, template in names.items()}


_HF_LAYER = "model.layers.{i}."
_HF_ATTN = _HF_LAYER + "self_attn."
LLAMA = FamilySpec(
    name="llama",
    gguf_architecture="llama",
    hf_model_types=("llama",),
    gguf_block_names={
        "attn_norm": "blk.{i}.attn_norm.weight", "q": "blk.{i}.attn_q.weight",
        "k": "blk.{i}.attn_k.weight", "v": "blk.{i}.attn_v.weight",
        "o": "blk.{i}.attn_output.weight", "ffn_norm": "blk.{i}.ffn_norm.weight",
        "gate": "blk.{i}.ffn_gate.weight", "up": "blk.{i}.ffn_up.weight",
        "down": "blk.{i}.ffn_down.weight",
    },
    hf_block_names={
        "attn_norm": _HF_LAYER + "input_layernorm.weight", "q": _HF_ATTN + "q_proj.weight",
        "k": _HF_ATTN + "k_proj.weight", "v": _HF_ATTN + "v_proj.weight",
        "o": _HF_ATTN + "o_proj.weight", "ffn_norm": _HF_LAYER + "post_attention_layernorm.weight",
        "gate": _HF_LAYER + "mlp.gate_proj.weight", "up": _HF_LAYER + "mlp.up_proj.weight",
        "down": _HF_LAYER + "mlp.down_proj.weight",
    },
    gguf_head_names={"embed": "token_embd.weight", "final_norm": "output_norm.weight", "lm_head": "output.weight"},
    hf_head_names={"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"},
    gguf_permuted_qk=True,
    hf_norm_offset=0.0,
    activation="silu",
)

# Mistral is Llama with an optional sliding window on every layer (config.json
# `sliding_window`; null in v0.2+). llama.cpp converts it to a "llama" GGUF (permuted q/k,
# no window), so a Mistral GGUF loads as family "llama" -- the same computation.
MISTRAL = replace(LLAMA, name="mistral", hf_model_types=("mistral",))

GEMMA3 = FamilySpec(
    name="gemma3",
    gguf_architecture="gemma3",
    hf_model_types=("gemma3_text", "gemma3"),
    gguf_block_names={
        **LLAMA.gguf_block_names,
        "q_norm": "blk.{i}.attn_q_norm.weight", "k_norm": "blk.{i}.attn_k_norm.weight",
        "post_attn_norm": "blk.{i}.post_attention_norm.weight", "post_ffn_norm": "blk.{i}.post_ffw_norm.weight",
    },
    hf_block_names={
        **LLAMA.hf_block_names,
        "q_norm": _HF_ATTN + "q_norm.weight", "k_norm": _HF_ATTN + "k_norm.weight",
        "post_attn_norm": _HF_LAYER + "post_attention_layernorm.weight",
        "ffn_norm": _HF_LAYER + "pre_feedforward_layernorm.weight",
        "post_ffn_norm": _HF_LAYER + "post_feedforward_layernorm.weight",
    },
    gguf_head_names=LLAMA.gguf_head_names,
    hf_head_names=LLAMA.hf_head_names,
    gguf_permuted_qk=False,
    hf_norm_offset=1.0,
    activation="gelu_tanh",
    fixed={"qk_norm": True, "sandwich_norms": True},
    defaults={"sliding_window": 512, "sliding_window_pattern": 6, "rope_local_theta": 10000.0},
    scale_embeddings=True,
    hf_tie_default=True,
    default_chat_template=GEMMA3_CHAT_TEMPLATE,
    extra_eos_tokens=("<end_of_turn>",),
)

# Qwen2 / Qwen2.5: Llama layout plus biases on q, k and v; llama.cpp keeps HF's q/k row order.
QWEN2 = FamilySpec(
    name="qwen2",
    gguf_architecture="qwen2",
    hf_model_types=("qwen2",),
    gguf_block_names={
        **LLAMA.gguf_block_names,
        "q_bias": "blk.{i}.attn_q.bias", "k_bias": "blk.{i}.attn_k.bias", "v_bias": "blk.{i}.attn_v.bias",
    },
    hf_block_names={
        **LLAMA.hf_block_names,
        "q_bias": _HF_ATTN + "q_proj.bias", "k_bias": _HF_ATTN + "k_proj.bias", "v_bias": _HF_ATTN + "v_proj.bias",
    },
    gguf_head_names=LLAMA.gguf_head_names,
    hf_head_names=LLAMA.hf_head_names,
    gguf_permuted_qk=False,
    hf_norm_offset=0.0,
    activation="silu",
    fixed={"qkv_bias": True},
    hf_sliding_flag="use_sliding_window",
)

# Qwen3: Llama layout plus a per-head RMSNorm on q and k (before RoPE), no biases.
QWEN3 = FamilySpec(
    name="qwen3",
    gguf_architecture="qwen3",
    hf_model_types=("qwen3",),
    gguf_block_names={**LLAMA.gguf_block_names, "q_norm": GEMMA3.gguf_block_names["q_norm"],
                      "k_norm": GEMMA3.gguf_block_names["k_norm"]},
    hf_block_names={**LLAMA.hf_block_names, "q_norm": GEMMA3.hf_block_names["q_norm"],
                    "k_norm": GEMMA3.hf_block_names["k_norm"]},
    gguf_head_names=LLAMA.gguf_head_names,
    hf_head_names=LLAMA.hf_head_names,
    gguf_permuted_qk=False,
    hf_norm_offset=0.0,
    activation="silu",
    fixed={"qk_norm": True},
    hf_sliding_flag="use_sliding_window",
)

# Phi-3: fused qkv_proj and gate_up_proj (llama.cpp: attn_qkv, and ffn_up holding gate|up);
# optional partial rotary; a sliding window on every layer when config.json sets one.
PHI3 = FamilySpec(
    name="phi3",
    gguf_architecture="phi3",
    hf_model_types=("phi3",),
    gguf_block_names={
        "attn_norm": "blk.{i}.attn_norm.weight", "qkv": "blk.{i}.attn_qkv.weight",
        "q": "blk.{i}.attn_q.weight", "k": "blk.{i}.attn_k.weight", "v": "blk.{i}.attn_v.weight",
        "o": "blk.{i}.attn_output.weight", "ffn_norm": "blk.{i}.ffn_norm.weight",
        "gate_up": "blk.{i}.ffn_up.weight", "down": "blk.{i}.ffn_down.weight",
    },
    hf_block_names={
        "attn_norm": _HF_LAYER + "input_layernorm.weight", "qkv": _HF_ATTN + "qkv_proj.weight",
        "o": _HF_ATTN + "o_proj.weight", "ffn_norm": _HF_LAYER + "post_attention_layernorm.weight",
        "gate_up": _HF_LAYER + "mlp.gate_up_proj.weight", "down": _HF_LAYER + "mlp.down_proj.weight",
    },
    gguf_head_names=LLAMA.gguf_head_names,
    hf_head_names=LLAMA.hf_head_names,
    gguf_permuted_qk=False,
    hf_norm_offset=0.0,
    activation="silu",
    gguf_rope_dims_partial=True,
)

# Order matters where two families share a GGUF architecture: the first one wins ("llama").
FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (LLAMA, GEMMA3, QWEN2, QWEN3, MISTRAL, PHI3)}


def get_family(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"Unknown model family {name!r}; supported families: {', '.join(FAMILIES)}.") from None


def family_for_gguf(architecture: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if spec.gguf_architecture == architecture:
            return spec
    supported = ", ".join(dict.fromkeys(spec.gguf_architecture for spec in FAMILIES.values()))
    raise ValueError(f"GGUF architecture {architecture!r} is not supported; supported architectures: {supported}.")


def family_for_hf(model_type: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if model_type in spec.hf_model_types:
            return spec
    supported = ", ".join(t for spec in FAMILIES.values() for t in spec.hf_model_types)
    raise ValueError(f"Hugging Face model_type {model_type!r} is not supported; supported types: {supported}.")


def _unsupported_rope(kind: str) -> ValueError:
    return ValueError(
        f"Rope scaling {kind!r} is not supported yet (supported: linear, llama3, and llama.cpp's rope_freqs "
        "factors); refusing to load rather than compute wrong logits. Use a checkpoint without it, e.g. "
        "Phi-3-mini-4k instead of the 128k / Phi-3.5 variants, which use 'longrope'."
    )


def config_from_gguf(
    metadata: Mapping[str, Any],
    tensor_shapes: Mapping[str, tuple[int, ...]],
    extra_eos_ids: tuple[int, ...] = (),
    rope_freq_factors: tuple[float, ...] | None = None,
) -> ModelConfig:
    """Build a ModelConfig from GGUF metadata (key -> python value) and tensor shapes ([out, in]).

    `rope_freq_factors` is the content of a `rope_freqs.weight` tensor when the file has one.
    Keys are llama.cpp's (`{arch}.embedding_length`, ...), read the same way for every family.
    """
    spec = family_for_gguf(str(metadata["general.architecture"]))
    arch = spec.gguf_architecture

    def meta(key: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{key}", default)

    hidden = int(meta("embedding_length"))
    n_heads = int(meta("attention.head_count"))
    rope_dims = int(meta("rope.dimension_count", 0) or 0)
    if spec.gguf_rope_dims_partial:
        head_dim = int(meta("attention.key_length", 0) or hidden // n_heads)
    else:
        head_dim = int(meta("attention.key_length", 0) or rope_dims or hidden // n_heads)
    vocab = tensor_shapes[spec.gguf_head_names["embed"]][0]
    rope_scaling = None
    scaling_type = str(meta("rope.scaling.type", "none") or "none")
    if any(name.startswith(("rope_factors_long", "rope_factors_short")) for name in tensor_shapes):
        raise _unsupported_rope("longrope")
    if rope_freq_factors:
        rope_scaling = RopeScaling(type="freq_factors", freq_factors=tuple(rope_freq_factors))
    elif scaling_type == "linear":
        rope_scaling = RopeScaling(type="linear", factor=float(meta("rope.scaling.factor", 1.0)))
    elif scaling_type != "none":
        raise _unsupported_rope(scaling_type)
    if "blk.0.attn_output.bias" in tensor_shapes:
        raise ValueError("This GGUF has attention output biases, which no supported family uses.")
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    eos_ids = tuple(dict.fromkeys(([int(eos)] if eos is not None else []) + list(extra_eos_ids)))
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    window = int(meta("attention.sliding_window", 0) or 0) or spec.defaults.get("sliding_window")
    softcap = meta("final_logit_softcapping")
    fields: dict[str, Any] = dict(spec.defaults)
    fields.update(
        family=spec.name,
        n_blocks=int(meta("block_count")),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=int(meta("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        vocab_size=int(vocab),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_embeddings=spec.gguf_head_names["lm_head"] not in tensor_shapes,
        context_length=int(meta("context_length", 2048)),
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_ids=eos_ids,
        activation=spec.activation,
        qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
        rotary_dim=rope_dims if spec.gguf_rope_dims_partial and 0 < rope_dims < head_dim else None,
        sliding_window=window,
        embed_scale=math.sqrt(hidden) if spec.scale_embeddings else 1.0,
        final_logit_softcapping=float(softcap) if softcap else None,
    )
    if meta("rope.freq_base_swa") is not None:
        fields["rope_local_theta"] = float(meta("rope.freq_base_swa"))
    fields.update(spec.fixed)
    return ModelConfig(**fields)


def _hf_rope(params: Mapping[str, Any] | None) -> RopeScaling | None:
    if not params:
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(type="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeScaling(
            type="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]),
            original_context_length=int(params["original_max_position_embeddings"]),
        )
    raise _unsupported_rope(str(kind))


def _sliding_pattern(layer_types: list[str]) -> int:
    """ModelConfig.sliding_window_pattern for HF `layer_types` that contain a sliding layer."""
    if "full_attention" not in layer_types:
        return 0  # every layer slides
    pattern = layer_types.index("full_attention") + 1
    expected = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(len(layer_types))]
    if list(layer_types) != expected:
        raise ValueError("This checkpoint's layer_types are not periodic; only periodic sliding patterns are supported.")
    return pattern


def _hf_sliding(spec: FamilySpec, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """sliding_window / sliding_window_pattern from config.json, for any family.

    `layer_types` (transformers >= 4.53) is authoritative; older files say it with
    `sliding_window_pattern` (Gemma 3), `use_sliding_window` + `max_window_layers` (Qwen), or a
    bare `sliding_window` that applies to every layer (Mistral, Phi-3).
    """
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if spec.hf_sliding_flag is not None:
        if not cfg.get(spec.hf_sliding_flag):
            return {"sliding_window": None}
        if not layer_types:
            first = int(cfg.get("max_window_layers", 0))
            n = int(cfg["num_hidden_layers"])
            layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    if layer_types:
        if "sliding_attention" not in layer_types:
            return {"sliding_window": None}
        window = window or spec.defaults.get("sliding_window")
        return {"sliding_window": int(window), "sliding_window_pattern": _sliding_pattern(layer_types)}
    if not window:
        return {"sliding_window": spec.defaults.get("sliding_window")}
    pattern = cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern",
                                                         spec.defaults.get("sliding_window_pattern", 0)))
    return {"sliding_window": int(window), "sliding_window_pattern": int(pattern)}


_HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def config_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json dict (transformers 4.x or 5.x layout)."""
    if "text_config" in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "gemma3_text")}
    spec = family_for_hf(str(cfg.get("model_type")))
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ValueError(f"This {spec.name} checkpoint sets {key}=true (biases on every projection), "
                             "which swarmllm does not support.")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act")
    if act is not None and _HF_ACTIVATIONS.get(str(act)) != spec.activation:
        raise ValueError(f"This {spec.name} checkpoint uses activation {act!r}; the family runs {spec.activation!r}.")
    hidden, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // n_heads)
    rope = cfg.get("rope_parameters") or {}
    global_rope = rope.get("full_attention", rope) if isinstance(rope, Mapping) else {}
    local_rope = rope.get("sliding_attention", {}) if isinstance(rope, Mapping) else {}
    rope_theta = float(global_rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    partial = float(global_rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0)
    rotary_dim = int(head_dim * partial)
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((int(eos),) if eos is not None else ())
    local_theta = local_rope.get("rope_theta", cfg.get("rope_local_base_freq"))
    fields: dict[str, Any] = dict(spec.defaults)
    fields.update(
        family=spec.name,
        n_blocks=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        vocab_size=int(cfg["vocab_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=_hf_rope(global_rope if global_rope.get("rope_type") else cfg.get("rope_scaling")),
        rotary_dim=rotary_dim if rotary_dim < head_dim else None,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", spec.hf_tie_default)),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        activation=spec.activation,
        embed_scale=math.sqrt(hidden) if spec.scale_embeddings else 1.0,
        query_pre_attn_scalar=float(cfg["query_pre_attn_scalar"]) if cfg.get("query_pre_attn_scalar") else None,
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
        **_hf_sliding(spec, cfg),
    )
    if local_theta is not None:
        fields["rope_local_theta"] = float(local_theta)
    fields.update(spec.fixed)
    return ModelConfig(**fields)
