"""Exact-match tests: the swarmllm engine vs transformers on the same SmolLM2 GGUF weights.

transformers dequantizes the GGUF with its own converter (incl. its q/k un-permutation), so
this checks our reader, RoPE layout, attention and head end to end. The Gemma 3 GGUF check is
marked slow (transformers takes ~40 s to load it on 2 cores).
"""

from __future__ import annotations

import os

import pytest
import torch

from swarmllm.engine.blocks import SpanModel
from swarmllm.engine.generation import generate
from swarmllm.runtime import LocalModel
from swarmllm.engine.sampling import SamplingParams
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short poem about the sea."},
]


def transformers_from_gguf(path: str):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = os.path.dirname(path), os.path.basename(path)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=name), dtype=torch.float32)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    model.tie_weights()
    return model.eval()


class NoEos:
    """Tokenizer view without EOS so both sides generate exactly N tokens."""

    eos_token_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer) -> None:
        self.decode = tokenizer.decode


@pytest.fixture(scope="module")
def smollm():
    return LocalModel.load("smollm2-135m", torch.float32, max_length=512)


@pytest.fixture(scope="module")
def smollm_hf():
    return transformers_from_gguf(resolve_model("smollm2-135m").path)


@pytest.fixture(scope="module")
def prompt_ids(smollm):
    return smollm.chat_ids(MESSAGES)


def full_logits(model: LocalModel, ids: list[int]) -> torch.Tensor:
    return model.head.logits(model.new_forward_fn()(model.head.embed([ids]), 0))


def test_prompt_logits_match_transformers(smollm, smollm_hf, prompt_ids):
    with torch.inference_mode():
        expected = smollm_hf(torch.tensor([prompt_ids])).logits
    ours = full_logits(smollm, prompt_ids)
    scale = expected.abs().max().item()
    assert (ours - expected).abs().max().item() < 1e-4 * scale
    assert torch.equal(ours[0, -1].argmax(), expected[0, -1].argmax())


def test_greedy_tokens_match_transformers_generate(smollm, smollm_hf, prompt_ids):
    n = 32
    with torch.inference_mode():
        out = smollm_hf.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0
        )
    expected = out[0, len(prompt_ids):].tolist()
    result = generate(smollm.head, NoEos(smollm.tokenizer), smollm.new_forward_fn(), prompt_ids,
                      SamplingParams(max_new_tokens=n))
    assert result.token_ids == expected
    assert result.finish_reason == "length"


def test_three_spans_equal_whole_model(smollm, prompt_ids):
    source = resolve_model("smollm2-135m")
    config = smollm.config
    spans = [SpanModel(config, load_blocks(source, config, a, b), a, b) for a, b in ((0, 10), (10, 20), (20, 30))]
    caches = [span.new_cache(256) for span in spans]

    def chain(hidden: torch.Tensor, start: int) -> torch.Tensor:
        for span, cache in zip(spans, caches):
            hidden = span(hidden, cache, start)
        return hidden

    params = SamplingParams(max_new_tokens=12)
    whole = generate(smollm.head, NoEos(smollm.tokenizer), smollm.new_forward_fn(), prompt_ids, params)
    split = generate(smollm.head, NoEos(smollm.tokenizer), chain, prompt_ids, params)
    assert split.token_ids == whole.token_ids
    hidden = smollm.head.embed([prompt_ids])
    whole_hidden = smollm.span(hidden, smollm.span.new_cache(256), 0)
    for cache in caches:
        cache.truncate(0)
    split_hidden = chain(hidden, 0)
    assert torch.allclose(split_hidden, whole_hidden, atol=1e-5)


def test_incremental_decode_and_rollback_match_recompute(smollm, prompt_ids):
    ids = prompt_ids + [504, 3287, 282, 260, 5109]
    reference = full_logits(smollm, ids)[0, -1]
    span, head = smollm.span, smollm.head
    cache = span.new_cache(256)
    span(head.embed([prompt_ids]), cache, 0)
    for i, token in enumerate(ids[len(prompt_ids):]):  # one token at a time
        last = head.logits(span(head.embed([[token]]), cache, len(prompt_ids) + i))[0, -1]
    assert (last - reference).abs().max().item() < 1e-3
    # speculative-style rollback: write 3 wrong tokens, truncate, then feed the right ones as one chunk
    cache.truncate(len(prompt_ids))
    span(head.embed([[17, 18, 19]]), cache, len(prompt_ids))
    cache.truncate(len(prompt_ids))
    redo = head.logits(span(head.embed([ids[len(prompt_ids):]]), cache, len(prompt_ids)))[0, -1]
    assert cache.length == len(ids)
    assert (redo - reference).abs().max().item() < 1e-3


def test_cache_overflow_is_a_clear_error(smollm):
    cache = smollm.span.new_cache(4)
    with pytest.raises(ValueError, match="at most 4"):
        smollm.span(smollm.head.embed([[1, 2, 3, 4, 5]]), cache, 0)
    with pytest.raises(ValueError, match="gap"):
        smollm.span(smollm.head.embed([[1]]), cache, 2)


@pytest.fixture(scope="module")
def gemma():
    return LocalModel.load("gemma3-270m", torch.float32, max_length=256)


@pytest.mark.slow
@pytest.mark.extended  # ~100 s, most of it transformers parsing the GGUF; `pytest -m extended`
def test_gemma3_gguf_matches_transformers(gemma):
    ids = gemma.chat_ids([{"role": "user", "content": "Name three colors of the rainbow."}])
    reference = transformers_from_gguf(resolve_model("gemma3-270m").path)
    with torch.inference_mode():
        expected = reference(torch.tensor([ids])).logits
        hf_tokens = reference.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                                       min_new_tokens=16, pad_token_id=0)[0, len(ids):].tolist()
    ours = full_logits(gemma, ids)
    assert (ours - expected).abs().max().item() < 1e-4 * expected.abs().max().item()
    result = generate(gemma.head, NoEos(gemma.tokenizer), gemma.new_forward_fn(), ids, SamplingParams(max_new_tokens=16))
    assert result.token_ids == hf_tokens


@pytest.mark.slow
def test_gemma3_two_spans_equal_whole_model(gemma):
    """Real weights, distributed == local: spans [0, 7) and [7, 18) (the cut inside a 6-layer
    sliding/global period) loaded from the file and chained give the whole model's tokens."""
    source, config = resolve_model("gemma3-270m"), gemma.config
    spans = [SpanModel(config, load_blocks(source, config, a, b), a, b) for a, b in ((0, 7), (7, 18))]
    caches = [span.new_cache(256) for span in spans]

    def chain(hidden: torch.Tensor, start: int) -> torch.Tensor:
        for span, cache in zip(spans, caches):
            hidden = span(hidden, cache, start)
        return hidden

    ids = gemma.chat_ids([{"role": "user", "content": "Name three colors of the rainbow."}])
    params = SamplingParams(max_new_tokens=12)
    whole = generate(gemma.head, NoEos(gemma.tokenizer), gemma.new_forward_fn(), ids, params)
    split = generate(gemma.head, NoEos(gemma.tokenizer), chain, ids, params)
    assert split.token_ids == whole.token_ids
