"""GGUF tokenizer metadata -> a `tokenizers.Tokenizer`, built with the `tokenizers` library only.

A GGUF carries no tokenizer.json: llama.cpp stores the vocabulary as metadata arrays
(`tokenizer.ggml.tokens`, `scores`, `token_type`, `merges`) plus special-token ids and flags.
`backend_from_gguf(metadata)` rebuilds the tokenizer those arrays describe.

Promises: the result encodes and decodes exactly as the tokenizer transformers builds for the
same file (`AutoTokenizer.from_pretrained(folder, gguf_file=...)`, whose GGUF converter this
module follows step by step; tests/unit/test_models_tokenizer.py compares them), without
importing transformers, so running a model needs no transformers.

Two kinds of vocabulary (`tokenizer.ggml.model`):
- "gpt2": byte-level BPE with the file's merges and a split regex chosen by `tokenizer.ggml.pre`
  (SmolLM2, Llama 3, Qwen).
- "llama": SentencePiece BPE with byte fallback (Gemma, Llama 2, Mistral, Phi-3). The text's
  spaces become "▁"; merges come from the file or, when it has none, from the vocabulary itself
  (every split of a token into two tokens, ranked by the token's score). Three styles, chosen by
  architecture as transformers does: Gemma (no prefix space; whitespace-run tokens respelled;
  file order ranks merges), Phi-3 (the prefix "▁" comes from a normalizer) and plain Llama
  (Metaspace, "▁" prepended to the first word).

In both, tokens the file marks CONTROL are special tokens and USER_DEFINED ones are added
tokens, matched whole in the raw text. It does not read files (`gguf_reader` gives the metadata)
and does not template chats (`tokenizer.py` does).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Callable, Mapping, Sequence

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types (gguf.TokenType)
_SPACE = "\u2581"  # SentencePiece's visible space, "▁"

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
_GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3"})
# Special tokens transformers' tokenizer classes name by default; they are special when present.
_GEMMA_DEFAULTS = ("<unk>", "<bos>", "<eos>", "<pad>", "<mask>")
_LLAMA_DEFAULTS = ("<unk>", "<s>", "</s>")
_NAMED_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")


def backend_from_gguf(metadata: Mapping[str, Any]) -> Backend:
    """The tokenizer GGUF `metadata` describes (see the module docstring for what is matched)."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind == "gpt2":
        return _byte_level_bpe(metadata)
    if kind == "llama":
        return _sentencepiece_bpe(metadata)
    raise ValueError(f"GGUF tokenizer type {kind!r} is not supported; supported: gpt2, llama.")


def _byte_level_bpe(metadata: Mapping[str, Any]) -> Backend:
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
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
    # A token marked CONTROL but spelled outside the byte alphabet is a llama.cpp mislabel; adding it
    # would grow the vocabulary past the model's embedding, so it is left out (as transformers does).
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    _add_marked_tokens(backend, tokens, metadata.get("tokenizer.ggml.token_type"), set(vocab),
                       control_ok=lambda t: set(t) <= alphabet)
    return backend


def _sentencepiece_bpe(metadata: Mapping[str, Any]) -> Backend:
    architecture = str(metadata["general.architecture"])
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    gemma = architecture in _GEMMA_ARCHITECTURES
    if gemma:
        # Gemma files store whitespace-run tokens with real spaces ("  "); the text reaches the model
        # with spaces already turned into "▁", so the vocabulary must spell them that way. Gemma's
        # scores do not follow its merge order; the file order does.
        spelled = [_SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        rank: Mapping[str, float] = {token: -index for index, token in enumerate(spelled)}
    else:
        spelled = tokens
        if "tokenizer.ggml.scores" not in metadata and "tokenizer.ggml.merges" not in metadata:
            raise ValueError("This GGUF's SentencePiece vocabulary has neither scores nor merges, so it cannot be "
                             "tokenized; use a GGUF converted by a recent llama.cpp.")
        rank = dict(zip(tokens, _floats(metadata.get("tokenizer.ggml.scores", ()))))
    vocab = {token: index for index, token in enumerate(spelled)}
    if "tokenizer.ggml.merges" in metadata:
        merges = [tuple(m.split(" ")) for m in metadata["tokenizer.ggml.merges"]]
    else:
        merges = merges_from_vocabulary(vocab, rank)
    unknown = _token(metadata, tokens, "unknown_token_id") or "<unk>"
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None,
                                 unk_token=unknown if gemma else None))
    decoding = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        backend.normalizer = normalizers.Replace(" ", _SPACE)
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    elif architecture == "phi3":  # the prefix "▁" comes from the normalizer: "  hi" -> "▁▁▁hi"
        backend.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first", split=False)
    if not gemma:
        decoding.append(decoders.Strip(content=" ", left=1, right=0))  # the prefix space added on encoding
    backend.decoder = decoders.Sequence(decoding)

    named = [_token(metadata, tokens, key) for key in _NAMED_IDS] + list(_GEMMA_DEFAULTS if gemma else _LLAMA_DEFAULTS)
    # A named token missing from the vocabulary is left out rather than appended: the model's
    # embedding has no row for it.
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(named)
                                if t in vocab])
    _add_marked_tokens(backend, tokens, metadata.get("tokenizer.ggml.token_type"), set(vocab))
    backend.post_processor = _bos_eos_template(metadata, vocab, tokens)
    return backend


def merges_from_vocabulary(vocab: Mapping[str, int], rank: Mapping[str, float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies: every split of a token into two tokens.

    Merges are ordered by their token's rank (higher first), then longer left and right pieces
    first; the splits of one token are listed by their pieces' ids before that stable sort. This is
    the order of transformers' `generate_merges`, which the ids must match.
    """
    found: list[tuple[int, int, float, int, int, str, str]] = []
    for token, score in rank.items():
        n = len(token)
        splits = [(vocab[token[:i]], vocab[token[i:]], score, i, n - i, token[:i], token[i:])
                  for i in range(1, n) if token[:i] in vocab and token[i:] in vocab]
        splits.sort()  # by the pieces' ids (each pair is distinct, so later fields never decide)
        found += splits
    found.sort(key=itemgetter(2, 3, 4), reverse=True)  # stable: equal keys keep the order above
    return [(left, right) for *_, left, right in found]


def _add_marked_tokens(backend: Backend, tokens: Sequence[str], types: Sequence[int] | None, vocab: set[str],
                       control_ok: Callable[[str], bool] = lambda token: True) -> None:
    """CONTROL tokens become special tokens, USER_DEFINED ones added tokens, so they stay whole.

    A USER_DEFINED token is added only under its own spelling in the vocabulary (Gemma's respelled
    whitespace runs are not: "▁▁" is reached through merges, as in transformers).
    """
    if types is None:
        return
    marked = list(zip(tokens, (int(k) for k in types)))
    control = [AddedToken(t, normalized=False, special=True) for t, k in marked if k == _CONTROL and control_ok(t)]
    user = [AddedToken(t, normalized=False, special=False) for t, k in marked if k == _USER_DEFINED and t in vocab]
    backend.add_special_tokens(control)
    backend.add_tokens(user)


def _bos_eos_template(metadata: Mapping[str, Any], vocab: Mapping[str, int],
                      tokens: Sequence[str]) -> processors.TemplateProcessing:
    """What `encode(..., add_special_tokens=True)` adds: BOS unless the file says not (llama.cpp's
    default for SentencePiece vocabularies), EOS only if the file asks for it."""
    bos, eos = _token(metadata, tokens, "bos_token_id"), _token(metadata, tokens, "eos_token_id")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", True)) and bos is not None
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    single = f"{f'{bos}:0 ' if add_bos else ''}$A:0{f' {eos}:0' if add_eos else ''}"
    pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
    named = [bos] if add_bos else []
    named += [eos] if add_eos else []
    return processors.TemplateProcessing(single=single, pair=pair,
                                         special_tokens=[(token, vocab[token]) for token in named])


def _token(metadata: Mapping[str, Any], tokens: Sequence[str], key: str) -> str | None:
    index = metadata.get(f"tokenizer.ggml.{key}")
    return tokens[int(index)] if index is not None else None


def _floats(values: Any) -> list[float]:
    return values.tolist() if hasattr(values, "tolist") else [float(v) for v in values]
