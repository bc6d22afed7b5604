"""Tokenizers built from GGUF metadata give transformers' ids and chat templates."""

from __future__ import annotations

import os

import pytest

from swarmllm.models.catalog import resolve_model
from swarmllm.weights.tokenizer import load_tokenizer

TEXTS = [
    "Hello world!",
    " leading space and  double  spaces\n\nnewlines\ttabs",
    "Ünïcödé — 中文 日本語 🙂 emojis",
    "code: def f(x):\n    return x**2  # 1234567",
    "<|im_start|>user\nhi<|im_end|>",
    "<start_of_turn>user\nhi<end_of_turn>",
]
MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks!"},
]


def pair(name: str):
    from transformers import AutoTokenizer

    source = resolve_model(name)
    theirs = AutoTokenizer.from_pretrained(os.path.dirname(source.path), gguf_file=os.path.basename(source.path))
    return load_tokenizer(source), theirs


@pytest.mark.parametrize("name", ["smollm2-135m", pytest.param("gemma3-270m", marks=pytest.mark.slow)])
def test_ids_and_decode_match_transformers(name):
    ours, theirs = pair(name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


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
