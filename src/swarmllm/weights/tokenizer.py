"""Tokenizer loading: GGUF metadata or a Hugging Face folder -> a small `Tokenizer` wrapper.

Promises: `encode` gives the same ids as transformers' tokenizer for the same file (tests check
it), `apply_chat_template` renders the model's Jinja chat template the way transformers does,
and `eos_token_ids` lists every id that ends a turn.

A GGUF's vocabulary, byte-level BPE (SmolLM2) or SentencePiece (Gemma), is rebuilt from its
metadata by `gguf_vocab.backend_from_gguf` with the `tokenizers` library alone; a Hugging Face
folder's tokenizer.json is read by `tokenizers` too. Nothing here imports transformers, which is
only the tests' reference.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from swarmllm.models.catalog import ModelSource
from swarmllm.models.registry import family_for_gguf


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


def _load_gguf_tokenizer(source: ModelSource) -> Tokenizer:
    from swarmllm.weights.gguf_reader import read_gguf_config, read_gguf_metadata
    from swarmllm.weights.gguf_vocab import backend_from_gguf

    metadata = read_gguf_metadata(source.path)
    spec = family_for_gguf(str(metadata["general.architecture"]))
    backend = backend_from_gguf(metadata)
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
