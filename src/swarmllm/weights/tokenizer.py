"""Tokenizer loading: GGUF metadata or a Hugging Face folder -> a small `Tokenizer` wrapper.

Promises: `encode` gives the same ids as transformers' tokenizer for the same file (tests check
it), `apply_chat_template` renders the model's Jinja chat template the way transformers does,
and `eos_token_ids` lists every id that ends a turn.

Byte-level BPE vocabularies (GGUF `tokenizer.ggml.model == "gpt2"`, e.g. SmolLM2) are built
directly with the `tokenizers` library (fast, no transformers import). SentencePiece-style GGUF
vocabularies (`"llama"`, e.g. Gemma) are converted by transformers' GGUF tokenizer builder,
imported lazily because its import is slow.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from swarmllm.models.catalog import ModelSource
from swarmllm.models.registry import family_for_gguf

_CONTROL, _USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 / Qwen2.5 / Qwen3 (llama.cpp pre "qwen2"): like Llama 3 but digits split one by one.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
               "qwen2": _QWEN2_SPLIT}


class Tokenizer:
    """Text <-> ids plus chat templating. Wraps a `tokenizers.Tokenizer`."""

    def __init__(
        self,
        backend: Any,
        chat_template: str | None,
        eos_token_ids: tuple[int, ...],
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.eos_token_ids = eos_token_ids
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._compiled_template: Any = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of `text`. Chat-templated text already carries its special tokens, hence the default."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render `messages` ([{"role": ..., "content": ...}]) with the model's chat template."""
        if self.chat_template is None:
            raise ValueError("This model has no chat template; pass a plain prompt instead of chat messages.")
        if self._compiled_template is None:
            self._compiled_template = _compile_template(self.chat_template)
        return self._compiled_template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


def _compile_template(template: str) -> Any:
    """Compile like transformers: sandboxed, trim_blocks + lstrip_blocks, its helper globals."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _byte_level_bpe(metadata: dict[str, Any]) -> Any:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = _PRE_SPLITS.get(str(metadata.get("tokenizer.ggml.pre")))
    if split:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None:
        control = [t for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet]
        user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED]
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    return backend


def _sentencepiece_via_transformers(path: str) -> Any:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, _ = get_gguf_tokenizer(path)
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return backend


def _load_gguf_tokenizer(source: ModelSource) -> Tokenizer:
    from swarmllm.weights.gguf_reader import read_gguf_config, read_gguf_metadata

    metadata = read_gguf_metadata(source.path)
    spec = family_for_gguf(str(metadata["general.architecture"]))
    kind = metadata.get("tokenizer.ggml.model")
    if kind == "gpt2":
        backend = _byte_level_bpe(metadata)
    elif kind == "llama":
        backend = _sentencepiece_via_transformers(source.path)
    else:
        raise ValueError(f"GGUF tokenizer type {kind!r} is not supported; supported: gpt2, llama.")
    tokens = metadata["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None else None

    template = metadata.get("tokenizer.chat_template") or spec.default_chat_template
    eos_ids = read_gguf_config(source.path).eos_token_ids
    return Tokenizer(backend, template, eos_ids, bos_token=token("bos_token_id"), eos_token=token("eos_token_id"))


def _load_hf_tokenizer(source: ModelSource) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    from swarmllm.weights.safetensors_reader import read_safetensors_config

    folder = Path(source.path)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"The model folder {folder} has no tokenizer.json; add one to use this model for text.")
    backend = Backend.from_file(str(folder / "tokenizer.json"))
    settings: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = settings.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")

    def token(key: str) -> str | None:
        value = settings.get(key)
        return value.get("content") if isinstance(value, dict) else value

    eos_ids = read_safetensors_config(source.path).eos_token_ids
    return Tokenizer(backend, template, eos_ids, bos_token=token("bos_token"), eos_token=token("eos_token"))


def load_tokenizer(source: ModelSource) -> Tokenizer:
    """Tokenizer for a GGUF file (from its metadata) or a HF folder (tokenizer.json)."""
    if source.format == "gguf":
        return _load_gguf_tokenizer(source)
    return _load_hf_tokenizer(source)
