"""Weight quantization: kernels vs a float reference, exact GGUF int4 re-packing, batch-independent
rows, greedy agreement of a real model, and the --quant plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swarmllm.cli import build_parser
from swarmllm.engine.blocks import SequenceStep, SpanModel
from swarmllm.runtime import LocalModel
from swarmllm.engine.quant import Int4Linear, Int8Linear, make_linear, quantize_int4, quantize_int8
from swarmllm.engine.row_tiles import ANY_ROWS
from swarmllm.engine.sampling import SamplingParams
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import Int4Codes, load_blocks, read_config
from swarmllm.weights.gguf_reader import open_gguf

DTYPES = [torch.float32, torch.bfloat16]
SHAPES = [(960, 576), (576, 1536)]  # SmolLM2's q|k|v and down projections


def _weight(N, K, seed=0):
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_linear_matches_float_reference(mode, dtype):
    N, K = SHAPES[0]
    w = _weight(N, K)
    x = torch.randn(8, K, generator=torch.Generator().manual_seed(1))
    linear = make_linear([w], mode, dtype)
    assert isinstance(linear, Int8Linear if mode == "int8" else Int4Linear)
    y = linear(x.to(dtype)).float()
    # Against the same quantized weights in float32: only kernel rounding differs.
    wq = linear.dequantize() if mode == "int8" else quantize_int4(w).dequantize()
    exact = x @ wq.T
    tol = 2e-2  # the kernels multiply bfloat16 activations (see quant.KERNEL_DTYPE)
    assert (y - exact).abs().max() <= tol * exact.abs().max()
    # Against the unquantized weights: the quantization error itself, bounded.
    rel = ((y - x @ w.T).norm() / (x @ w.T).norm()).item()
    assert rel < (0.01 if mode == "int8" else 0.12), rel


def test_int4_clip_search_never_worse_than_round_to_nearest():
    w = _weight(64, 256)
    w[0, 3] = 1.0  # an outlier that stretches its group's range
    plain, searched = quantize_int4(w), quantize_int4(w, clip_search=True)
    err = lambda c: (c.dequantize() - w).square().sum().item()  # noqa: E731
    assert err(searched) <= err(plain)


def test_int8_quantization_is_symmetric_per_row():
    w = _weight(16, 64)
    codes, scales = quantize_int8(w)
    assert codes.dtype == torch.int8 and scales.shape == (16,)
    assert (codes.abs().amax(1) == 127).all()


@pytest.mark.parametrize("model, name", [("smollm2-135m", "blk.0.attn_q.weight"),  # Q4_1
                                         ("gemma3-270m", "blk.0.attn_output.weight")])  # Q4_K
def test_gguf_q4_codes_repack_exactly(model, name):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    from swarmllm.weights.gguf_int4 import int4_codes

    file = open_gguf(resolve_model(model).path)
    info = file.tensors[name]
    codes = int4_codes(file.raw(name), info.type, info.hf_shape)
    reference = dequantize(file.raw(name), GGMLQuantizationType(info.type)).reshape(info.hf_shape)
    np.testing.assert_array_equal(codes.dequantize().numpy(), reference)
    # Through the (slow) float32 kernel the layer equals F.linear with the file's dequantized weights.
    x = torch.randn(4, info.hf_shape[1], generator=torch.Generator().manual_seed(0))
    y = Int4Linear(codes, kernel_dtype=torch.float32)(x)
    ref = x @ torch.from_numpy(reference).T
    assert (y - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_keep_int4_loads_codes_with_llama_rows_unpermuted():
    source = resolve_model("smollm2-135m")
    config = read_config(source)
    floats = load_blocks(source, config, 0, 1)[0]
    kept = load_blocks(source, config, 0, 1, keep_int4=True)[0]
    for role in ("q", "k", "v", "down"):
        assert isinstance(getattr(kept, role), Int4Codes)
        assert torch.equal(getattr(kept, role).dequantize(), getattr(floats, role)), role


@pytest.fixture(scope="module")
def smollm_blocks():
    source = resolve_model("smollm2-135m")
    config = read_config(source)
    return config, load_blocks(source, config, 0, 2, keep_int4=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_rows_do_not_depend_on_the_batch(smollm_blocks, mode, dtype):
    """The continuous-batching invariant (see engine/row_tiles.py) holds for the quantized kernels
    at any row count, so quantized spans run all short rows in one call, unpadded."""
    config, blocks = smollm_blocks
    linear = make_linear([blocks[0].gate, blocks[0].up], mode, dtype)
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(0)).to(dtype)
    full = linear(x)
    assert linear.count_independent
    for rows in range(1, 64):
        for first in (0, 64 - rows):
            part = linear(x[first:first + rows])
            assert torch.equal(part, full[first:first + rows]), (rows, first)
    assert torch.equal(linear(x.flip(0)), full.flip(0))

    span = SpanModel(config, blocks, 0, 2, dtype, mode)
    assert span.row_tile == ANY_ROWS
    seqs = [torch.randn(n, 576, generator=torch.Generator().manual_seed(n)) for n in (1, 3, 6)]
    alone = [span.forward_many([SequenceStep(s, span.new_cache(16), 0)])[0] for s in seqs]
    together = span.forward_many([SequenceStep(s, span.new_cache(16), 0) for s in seqs])
    for a, b in zip(alone, together):
        assert torch.equal(a, b)


def test_weight_bytes_per_block_shrink(smollm_blocks):
    config, blocks = smollm_blocks
    sizes = {mode: SpanModel(config, blocks, 0, 2, torch.bfloat16, mode).weight_bytes_per_block
             for mode in ("none", "int8", "int4")}
    assert SpanModel(config, blocks, 0, 2, torch.float32, "int4").weight_bytes_per_block == sizes["int4"]
    params = 576 * (960 + 576 + 3072) + 1536 * 576
    assert sizes["none"] == 2 * params
    assert params < sizes["int8"] < 1.01 * params  # one byte per weight + a scale per row
    assert sizes["int4"] == params // 2 + params // 32 * 2 * 2  # half a byte + two bf16 per group of 32


@pytest.mark.slow
def test_greedy_tokens_int8_agree_with_default():
    """int8 weights keep smollm2-135m's greedy output; int4 is reported, not required to match."""
    params = SamplingParams(max_new_tokens=24)
    prompt = None
    outputs = {}
    for mode in ("none", "int8", "int4"):
        model = LocalModel.load("smollm2-135m", torch.float32, max_length=256, quant=mode)
        prompt = prompt or model.chat_ids([{"role": "user", "content": "What is the capital of France?"}])
        outputs[mode] = model.generate(prompt, params).token_ids
    agree = sum(a == b for a, b in zip(outputs["none"], outputs["int8"])) / len(outputs["none"])
    assert agree >= 0.9, outputs
    assert len(outputs["int4"]) > 0


def test_quant_flag_plumbing_and_bad_value(capsys):
    parser = build_parser()
    args = parser.parse_args(["serve", "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x", "--quant", "int4"])
    assert args.quant == "int4"
    assert parser.parse_args(["generate", "--local", "hi", "--quant", "int8"]).quant == "int8"
    assert parser.parse_args(["generate", "--local", "hi"]).quant == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--local", "hi", "--quant", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown weight quantization 'fp4'"):
        LocalModel.load("smollm2-135m", quant="fp4")


def test_serve_passes_quant_to_the_node(monkeypatch):
    import swarmllm.cli as cli
    import swarmllm.server.node as node

    seen = {}

    class FakeNode:
        def __init__(self, config):
            seen["quant"] = config.quant

        def install_signal_handlers(self):
            pass

        async def run(self, on_ready=None):
            pass

    monkeypatch.setattr(node, "ServerNode", FakeNode)
    args = build_parser().parse_args(["serve", "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x", "--quant", "int8"])
    assert cli.cmd_serve(args) == 0 and seen["quant"] == "int8"


def test_generate_quant_needs_local(capsys):
    from swarmllm import cli

    assert cli.main(["generate", "--initial-peers", "/ip4/1.2.3.4/tcp/1", "--quant", "int8", "hi"]) == 2
    assert "serve --quant" in capsys.readouterr().err


def test_local_generate_and_server_backend_load_quantized_weights():
    from swarmllm.client.generation import GenerationOptions, Generator
    from swarmllm.server.backend import SpanBackend

    generator = Generator.local("smollm2-135m", "float32", "int4")
    result = generator.generate(generator.model.prompt_ids("hi"), GenerationOptions(SamplingParams(max_new_tokens=2)))
    assert result.generated_tokens == 2 and result.route_text() == "local"
    backend = SpanBackend.load("smollm2-135m", 3, 5, dtype_name="bfloat16", quant="int8")
    assert backend.quant == "int8" and isinstance(backend.span.layers[0].down, Int8Linear)
