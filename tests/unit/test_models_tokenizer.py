"""Tokenizers built from GGUF metadata give transformers' ids, decodes and chat templates, and the
runtime path never imports transformers (it is the tests' reference only)."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys

import pytest

from swarmllm.models.catalog import resolve_model
from swarmllm.weights.gguf_vocab import backend_from_gguf
from swarmllm.weights.tokenizer import load_tokenizer

TEXTS = [
    "Hello world!",
    "hello",
    "",
    " ",
    "  ",
    "   leading spaces",
    "trailing spaces   ",
    " leading space and  double  spaces\n\nnewlines\ttabs",
    "\n",
    "\n\n\n",
    "a\r\nb\rc\n\td",
    "\t\t indented\n    four spaces\n        eight",
    "mixed \u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "Ünïcödé — 中文 日本語 🙂 emojis",
    "Ça va? Déjà vu, naïve façade, Straße, İstanbul, ǅ",
    "Привет, мир! Ελληνικά. עברית. العربية. हिन्दी. ไทย",
    "中文分词测试：我们今天去公园散步。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 문장입니다.",
    "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇫🇷 ❤️ 🤖",
    "combining: e\u0301 a\u0308 n\u0303; zero\u200bwidth\u200djoiner",
    "control chars: \x00 \x01 \x7f \x1b[31m",
    "math: ∑_{i=1}^{n} x_i² ≤ √2 · π ≈ 3.14159",
    "digits: 0 1 12 123 1234 12345 123456789 3.14 -42 1e10 0x1F 1,000,000",
    "2024-06-01T12:34:56Z and 192.168.0.1:8080",
    "code: def f(x):\n    return x**2  # 1234567",
    'if (a && b || !c) { console.log(`x=${x}`); } // comment',
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "punctuation!!! ??? ... --- *** ___ ~~~ ((())) [[]] {{}}",
    "don't won't it's I'm you're we've they'll he'd",
    "UPPER lower MiXeD CamelCase snake_case kebab-case",
    "a" * 200,
    "ab " * 60,
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|>",
    "<start_of_turn>user\nhi<end_of_turn>",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "text<eos>more<pad><unk><mask>",
    "<start_of_image> [multimodal] <unused0> <unused99>",
    "<start_of_turn>\n\n  <end_of_turn>",
    "not special: <start_of_turn <|im_start| <b>bold</b> <s> </s>",
]
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks!"},
]
CHATS = [
    MESSAGES,
    [{"role": "user", "content": " Hi  there\n\n  \tindent 🙂 中文 123456"}],
    [{"role": "user", "content": "code?"}, {"role": "assistant", "content": "```python\nprint('x')\n```"},
     {"role": "user", "content": "<start_of_turn> inside <|im_end|> content"}],
]


@functools.lru_cache(maxsize=None)
def pair(name: str):
    """(ours, transformers') for a catalog model; cached, transformers' Gemma 3 load takes ~40 s."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(source.path), gguf_file=os.path.basename(source.path))
    return load_tokenizer(source), theirs


def chat_texts(ours) -> list[str]:
    """Our rendering: Gemma 3's file has no template (the family default is used), and SmolLM2's
    rendering is compared with transformers' below."""
    return [ours.apply_chat_template(chat, add_generation_prompt=prompt) for chat in CHATS for prompt in (True, False)]


def assert_same_tokenization(ours, theirs) -> int:
    """Encode and decode every text both ways; returns how many texts were compared."""
    texts = TEXTS + chat_texts(ours)
    for text in texts:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.encode(text, add_special_tokens=True) == theirs.encode(text, add_special_tokens=True), text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
    # Arbitrary id runs too: partial UTF-8 byte-fallback pieces, special tokens mid-text.
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 40))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), ids
    return len(texts)


@pytest.mark.parametrize("name", ["smollm2-135m",
                                  pytest.param("gemma3-270m", marks=[pytest.mark.slow, pytest.mark.extended])])
def test_ids_and_decode_match_transformers(name):
    ours, theirs = pair(name)
    assert assert_same_tokenization(ours, theirs) == len(TEXTS) + 2 * len(CHATS)


@pytest.mark.slow
@pytest.mark.extended  # loads transformers' Gemma tokenizer (~30 s), as the parity case above
def test_gemma3_backend_is_transformers_own():
    """Not just the samples: vocabulary, merges, normalizer, pre-tokenizer, decoder, added tokens
    and BOS template serialize identically."""
    ours, theirs = pair("gemma3-270m")
    assert json.loads(ours.backend.to_str()) == json.loads(theirs.backend_tokenizer.to_str())


def test_smollm2_chat_template_matches_transformers():
    ours, theirs = pair("smollm2-135m")
    for generation_prompt in (True, False):
        expected = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=generation_prompt)
        assert ours.apply_chat_template(MESSAGES, add_generation_prompt=generation_prompt) == expected
    assert ours.eos_token_ids == (2,)


def test_gemma3_uses_builtin_chat_template():
    ours = load_tokenizer(resolve_model("gemma3-270m"))
    text = ours.apply_chat_template(MESSAGES)
    assert text.startswith("<bos><start_of_turn>user\nYou are helpful.\n\nWhat is 2+2?<end_of_turn>\n")
    assert text.endswith("<start_of_turn>model\n")
    assert set(ours.eos_token_ids) == {1, 106}


# --- the other SentencePiece styles (Llama 2 / Mistral, Phi-3), on a tiny vocabulary ------------
_PIECES = ["▁", "e", "h", "l", "o", "w", "r", "d", "i", "▁h", "he", "ll", "llo", "▁he", "▁hello", "lo", "▁w", "or",
           "▁wor", "ld", "▁world", "中", "▁▁", "  ", "hi", "▁hi", "▁▁▁"]
_SPECIALS = ["<|user|>", "<think>", "\n\n"]


def _tiny_sentencepiece(architecture: str) -> tuple[dict, dict]:
    """(GGUF metadata, transformers' tokenizer dict) of one tiny SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + _PIECES + _SPECIALS
    types = [2, 3, 3] + [6] * 256 + [1] * len(_PIECES) + [3, 4, 4]  # UNKNOWN, CONTROL, BYTE, NORMAL, USER_DEFINED
    scores = [0.0] * 259 + [-float(i) for i in range(len(_PIECES))] + [0.0] * len(_SPECIALS)
    ids = {"bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0}
    metadata = {"general.architecture": architecture, "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
                **{f"tokenizer.ggml.{key}": value for key, value in ids.items()}}
    theirs = {"tokenizer_type": "llama", "tokens": tokens, "scores": scores, "token_type": types,
              "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0}
    return metadata, theirs


@pytest.mark.parametrize("architecture", ["llama", "phi3", "gemma3"])
def test_sentencepiece_styles_match_transformers_converter(architecture):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    metadata, tokenizer_dict = _tiny_sentencepiece(architecture)
    ours = backend_from_gguf(metadata)
    theirs, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    texts = ["hello world", " hello  world", "   hi", "hi<|user|>hello\n\nworld<think>", "中文 ok", "\tx", "hi  ",
             "<s>hello</s>", ""]
    for text in texts:
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == theirs.encode(text, add_special_tokens=False).ids, text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), text
    ours_json, theirs_json = json.loads(ours.to_str()), json.loads(theirs.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder", "model"):
        assert ours_json[part] == theirs_json[part], part


def test_gemma3_tokenizer_loads_without_transformers():
    """The runtime path: with transformers unimportable, the Gemma 3 tokenizer loads and encodes chat."""
    script = (
        "import sys\n"
        "sys.modules['transformers'] = None  # any `import transformers...` now raises ImportError\n"
        "from swarmllm.models.catalog import resolve_model\n"
        "from swarmllm.weights.tokenizer import load_tokenizer\n"
        "tokenizer = load_tokenizer(resolve_model('gemma3-270m'))\n"
        "ids = tokenizer.encode(tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hi'}]))\n"
        "assert ids == [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107], ids\n"
        "assert not any(name.startswith('transformers.') for name in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
