"""Family registry: per-family weight-name maps and config mappings, as data.

A `FamilySpec` says, for one model family, how GGUF and Hugging Face checkpoints name each
tensor *role* (q, k, v, o, gate, ...), whether llama.cpp permuted q/k rows, how HF stores
RMSNorm weights, and which defaults fill what the metadata leaves out. The readers in
`swarmllm.weights` and the engine consume roles only, so adding a family means adding one
`FamilySpec` and, if needed, a few `ModelConfig` fields -- never a subclass.

`config_from_gguf` and `config_from_hf` turn metadata (already parsed into plain Python
values by the caller) into a `ModelConfig`. Nothing here opens files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from swarmllm.models.config import ModelConfig, RopeScaling

# Tensor roles of one transformer block, in the order BlockWeights declares them.
BLOCK_ROLES = (
    "attn_norm", "q", "k", "v", "o", "q_norm", "k_norm", "post_attn_norm",
    "ffn_norm", "gate", "up", "down", "post_ffn_norm",
)
NORM_ROLES = frozenset({"attn_norm", "q_norm", "k_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm"})
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
    gguf_architecture: str
    hf_model_types: tuple[str, ...]
    gguf_block_names: Mapping[str, str]  # role -> name template with {i}
    hf_block_names: Mapping[str, str]
    gguf_head_names: Mapping[str, str]  # role -> tensor name
    hf_head_names: Mapping[str, str]
    gguf_permuted_qk: bool  # llama.cpp permuted q/k rows for its rotary layout
    hf_norm_offset: float  # HF stores w with multiplier (offset + w); GGUF stores the multiplier
    activation: str
    gguf_defaults: Mapping[str, Any]  # ModelConfig fields metadata does not carry
    default_chat_template: str | None = None
    extra_eos_tokens: tuple[str, ...] = ()  # token strings that also end a turn

    def block_tensor_names(self, fmt: str, index: int) -> dict[str, str]:
        names = self.gguf_block_names if fmt == "gguf" else self.hf_block_names
        return {role: template.format(i=index) for role, template in names.items()}


_HF_LAYER = "model.layers.{i}."
LLAMA = FamilySpec(
    name="llama",
    gguf_architecture="llama",
    hf_model_types=("llama", "mistral"),
    gguf_block_names={
        "attn_norm": "blk.{i}.attn_norm.weight", "q": "blk.{i}.attn_q.weight",
        "k": "blk.{i}.attn_k.weight", "v": "blk.{i}.attn_v.weight",
        "o": "blk.{i}.attn_output.weight", "ffn_norm": "blk.{i}.ffn_norm.weight",
        "gate": "blk.{i}.ffn_gate.weight", "up": "blk.{i}.ffn_up.weight",
        "down": "blk.{i}.ffn_down.weight",
    },
    hf_block_names={
        "attn_norm": _HF_LAYER + "input_layernorm.weight", "q": _HF_LAYER + "self_attn.q_proj.weight",
        "k": _HF_LAYER + "self_attn.k_proj.weight", "v": _HF_LAYER + "self_attn.v_proj.weight",
        "o": _HF_LAYER + "self_attn.o_proj.weight", "ffn_norm": _HF_LAYER + "post_attention_layernorm.weight",
        "gate": _HF_LAYER + "mlp.gate_proj.weight", "up": _HF_LAYER + "mlp.up_proj.weight",
        "down": _HF_LAYER + "mlp.down_proj.weight",
    },
    gguf_head_names={"embed": "token_embd.weight", "final_norm": "output_norm.weight", "lm_head": "output.weight"},
    hf_head_names={"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"},
    gguf_permuted_qk=True,
    hf_norm_offset=0.0,
    activation="silu",
    gguf_defaults={},
)

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
        "q_norm": _HF_LAYER + "self_attn.q_norm.weight", "k_norm": _HF_LAYER + "self_attn.k_norm.weight",
        "post_attn_norm": _HF_LAYER + "post_attention_layernorm.weight",
        "ffn_norm": _HF_LAYER + "pre_feedforward_layernorm.weight",
        "post_ffn_norm": _HF_LAYER + "post_feedforward_layernorm.weight",
    },
    gguf_head_names=LLAMA.gguf_head_names,
    hf_head_names=LLAMA.hf_head_names,
    gguf_permuted_qk=False,
    hf_norm_offset=1.0,
    activation="gelu_tanh",
    gguf_defaults={"sliding_window_pattern": 6, "rope_local_theta": 10000.0, "qk_norm": True, "sandwich_norms": True},
    default_chat_template=GEMMA3_CHAT_TEMPLATE,
    extra_eos_tokens=("<end_of_turn>",),
)

FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (LLAMA, GEMMA3)}


def get_family(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"Unknown model family {name!r}; supported families: {', '.join(FAMILIES)}.") from None


def family_for_gguf(architecture: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if spec.gguf_architecture == architecture:
            return spec
    supported = ", ".join(spec.gguf_architecture for spec in FAMILIES.values())
    raise ValueError(f"GGUF architecture {architecture!r} is not supported; supported architectures: {supported}.")


def family_for_hf(model_type: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if model_type in spec.hf_model_types:
            return spec
    supported = ", ".join(t for spec in FAMILIES.values() for t in spec.hf_model_types)
    raise ValueError(f"Hugging Face model_type {model_type!r} is not supported; supported types: {supported}.")


def config_from_gguf(
    metadata: Mapping[str, Any],
    tensor_shapes: Mapping[str, tuple[int, ...]],
    extra_eos_ids: tuple[int, ...] = (),
    rope_freq_factors: tuple[float, ...] | None = None,
) -> ModelConfig:
    """Build a ModelConfig from GGUF metadata (key -> python value) and tensor shapes ([out, in]).

    `rope_freq_factors` is the content of a `rope_freqs.weight` tensor when the file has one.
    """
    spec = family_for_gguf(str(metadata["general.architecture"]))
    arch = spec.gguf_architecture

    def meta(key: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{key}", default)

    hidden = int(meta("embedding_length"))
    n_heads = int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", 0) or meta("rope.dimension_count", 0) or hidden // n_heads)
    vocab = tensor_shapes[spec.gguf_head_names["embed"]][0]
    rope_scaling = None
    if rope_freq_factors:
        rope_scaling = RopeScaling(type="freq_factors", freq_factors=tuple(rope_freq_factors))
    elif meta("rope.scaling.type") == "linear":
        rope_scaling = RopeScaling(type="linear", factor=float(meta("rope.scaling.factor", 1.0)))
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    eos_ids = tuple(dict.fromkeys(([int(eos)] if eos is not None else []) + list(extra_eos_ids)))
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    fields: dict[str, Any] = dict(
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
        **spec.gguf_defaults,
    )
    if spec.name == "gemma3":
        fields.update(
            sliding_window=int(meta("attention.sliding_window", 512)),
            query_pre_attn_scalar=float(head_dim),
            embed_scale=math.sqrt(hidden),
        )
        softcap = meta("final_logit_softcapping")
        fields["final_logit_softcapping"] = float(softcap) if softcap else None
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
    raise ValueError(f"Rope scaling {kind!r} is not supported yet; supported: linear, llama3.")


def _sliding_pattern(cfg: Mapping[str, Any]) -> int:
    layer_types = cfg.get("layer_types")
    if not layer_types:
        return int(cfg.get("sliding_window_pattern", cfg.get("_sliding_window_pattern", 6)))
    if "full_attention" not in layer_types:
        return 0
    pattern = layer_types.index("full_attention") + 1
    expected = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(len(layer_types))]
    if list(layer_types) != expected:
        raise ValueError("This checkpoint's layer_types are not periodic; only periodic sliding patterns are supported.")
    return pattern


def config_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json dict (transformers 4.x or 5.x layout)."""
    if "text_config" in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", "gemma3_text")}
    spec = family_for_hf(str(cfg.get("model_type")))
    hidden, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    rope = cfg.get("rope_parameters") or {}
    global_rope = rope.get("full_attention", rope) if isinstance(rope, Mapping) else {}
    local_rope = rope.get("sliding_attention", {}) if isinstance(rope, Mapping) else {}
    rope_theta = float(global_rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((int(eos),) if eos is not None else ())
    fields: dict[str, Any] = dict(
        family=spec.name,
        n_blocks=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or hidden // n_heads),
        vocab_size=int(cfg["vocab_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=_hf_rope(global_rope if global_rope.get("rope_type") else cfg.get("rope_scaling")),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", spec.name == "gemma3")),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        activation=spec.activation,
    )
    if spec.name == "gemma3":
        fields.update(
            sliding_window=int(cfg.get("sliding_window") or 512),
            sliding_window_pattern=_sliding_pattern(cfg),
            rope_local_theta=float(local_rope.get("rope_theta", cfg.get("rope_local_base_freq", 10000.0))),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar") or fields["head_dim"]),
            embed_scale=math.sqrt(hidden),
            qk_norm=True,
            sandwich_norms=True,
            final_logit_softcapping=cfg.get("final_logit_softcapping"),
        )
    return ModelConfig(**fields)
