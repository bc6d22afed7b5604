"""Benchmark: what compressing hidden states on the wire, and the KV cache, costs in quality.

For each model (smollm2-135m, gemma3-270m) and each wire format (float32, float16, bfloat16,
int8) it reports bytes per token per hop, and quality under teacher forcing over N positions
(default 2048) of an English text that ships with every Python (the stdlib's LICENSE.txt):
- top-1 agreement of the next-token prediction with the uncompressed (fp32 wire) run,
- mean KL(uncompressed || compressed) of the next-token distribution,
- perplexity of the text, for scale.
The wire is simulated in-process: encode -> decode (the real codec) at every crossing of a
3-way split — client -> A, A -> B (after a third of the blocks), B -> C, C -> client —
computing in float32. The int8 KV cache is measured the same way (fp32 wire), with its
memory: sessions of 2048 tokens per GiB of KV cache, and its decode-time cost at 2048.
Delta encoding (each position minus the previous one) is measured on the A -> B hidden
states: reconstruction error and zlib-compressed size, direct vs delta.

    python benchmarks/compression.py [--quick] [--positions 2048] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from swarmllm.engine.blocks import SpanModel  # noqa: E402
from swarmllm.engine.head import ModelHead  # noqa: E402
from swarmllm.engine.kv_cache import kv_bytes_per_token  # noqa: E402
from swarmllm.models.catalog import resolve_model  # noqa: E402
from swarmllm.models.tokenizer import load_tokenizer  # noqa: E402
from swarmllm.protocol import Step, decode_tensor, encode_frame, encode_tensor  # noqa: E402
from swarmllm.weights import load_blocks, load_head, read_config  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m")
WIRE_FORMATS = ("float32", "float16", "bfloat16", "int8")
# (name, wire format, KV-cache dtype); the first is the reference.
VARIANTS = [(f"wire {w}", w, "auto") for w in WIRE_FORMATS] + [("kv int8", "float32", "int8"),
                                                                ("wire int8 + kv int8", "int8", "int8")]
SESSION_TOKENS = 2048
TEXT_PATH = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"


def text_ids(tokenizer, config, n_positions: int) -> torch.Tensor:
    """n_positions + 1 token ids of the text (BOS first where the model has one)."""
    text = TEXT_PATH.read_text()
    ids = ([config.bos_token_id] if config.bos_token_id is not None else []) + tokenizer.encode(text)
    while len(ids) < n_positions + 1:  # only for positions beyond the text: repeat it
        ids += tokenizer.encode(text)
    return torch.tensor(ids[:n_positions + 1])


def through_wire(hidden: torch.Tensor, wire: str) -> torch.Tensor:
    meta, raw = encode_tensor(hidden, wire)
    return decode_tensor(meta, raw, hidden.dtype)


def run_chain(head: ModelHead, spans: list[SpanModel], ids: torch.Tensor, wire: str,
              kv_dtype: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(final hidden states [N, D], what each span received), the wire simulated at every crossing."""
    hidden = head.embed(ids.unsqueeze(0))
    boundaries = []
    for span in spans:
        hidden = through_wire(hidden, wire)
        boundaries.append(hidden)
        hidden = span(hidden, span.new_cache(ids.numel(), kv_dtype=kv_dtype), 0)
    return through_wire(hidden, wire)[0], boundaries


@torch.inference_mode()
def compare(head: ModelHead, finals: dict[str, torch.Tensor], targets: torch.Tensor, chunk: int = 128) -> dict:
    """Per variant: top-1 agreement and mean KL vs the first (reference) variant, and perplexity."""
    names = list(finals)
    agree = {n: 0 for n in names}
    kl_sum = {n: 0.0 for n in names}
    nll_sum = {n: 0.0 for n in names}
    for start in range(0, targets.numel(), chunk):
        end = min(start + chunk, targets.numel())
        ref = torch.log_softmax(head.logits(finals[names[0]][start:end].unsqueeze(0))[0], dim=-1)
        for name in names:
            logp = ref if name == names[0] else torch.log_softmax(head.logits(finals[name][start:end].unsqueeze(0))[0], -1)
            agree[name] += int((logp.argmax(-1) == ref.argmax(-1)).sum())
            kl_sum[name] += float((ref.exp() * (ref - logp)).sum())
            nll_sum[name] -= float(logp.gather(1, targets[start:end, None]).sum())
    n = targets.numel()
    return {name: {"top1_agreement": agree[name] / n, "mean_kl": kl_sum[name] / n,
                   "perplexity": float(torch.exp(torch.tensor(nll_sum[name] / n)))} for name in names}


def wire_bytes(hidden_size: int) -> dict:
    """Bytes one decode step's hidden state costs per hop: the tensor payload and the whole frame."""
    out = {}
    for wire in WIRE_FORMATS:
        meta, raw = encode_tensor(torch.randn(1, 1, hidden_size), wire)
        frame = encode_frame(Step(session_id="0" * 32, step_id=123, start_position=456, tensor=meta), raw)
        out[wire] = {"payload": len(raw), "frame": len(frame) + 8}  # + the transport's 8-byte length prefix
    for wire in WIRE_FORMATS:
        out[wire]["payload_vs_fp32"] = out[wire]["payload"] / out["float32"]["payload"]
        out[wire]["frame_vs_fp32"] = out[wire]["frame"] / out["float32"]["frame"]
    return out


def delta_study(hidden: torch.Tensor) -> dict:
    """int8 of each position vs int8 of its difference to the previous (reconstructed) position."""
    h = hidden.float()  # [N, D] as the second server receives it (fp32 wire)
    direct = through_wire(h.unsqueeze(1), "int8")[:, 0]
    recon, previous, delta_payloads = torch.empty_like(h), torch.zeros(h.shape[1]), []
    for t in range(h.shape[0]):  # closed loop: the receiver adds decoded deltas, so errors do not drift
        meta, raw = encode_tensor((h[t] - previous).view(1, 1, -1), "int8")
        previous = recon[t] = previous + decode_tensor(meta, raw)[0, 0]
        delta_payloads.append(raw)
    direct_payloads = [encode_tensor(h[t].view(1, 1, -1), "int8")[1] for t in range(h.shape[0])]

    def zlib_ratio(payloads: list[bytes]) -> float:
        return statistics.mean(len(zlib.compress(p, 9)) / len(p) for p in payloads)

    norm = h.norm()
    return {
        "mean_relative_step": float(((h[1:] - h[:-1]).norm(dim=1) / h[1:].norm(dim=1)).mean()),
        "int8_relative_error_direct": float((direct - h).norm() / norm),
        "int8_relative_error_delta": float((recon - h).norm() / norm),
        "zlib_ratio_int8_direct": zlib_ratio(direct_payloads),
        "zlib_ratio_int8_delta": zlib_ratio(delta_payloads),
        "zlib_ratio_fp16": zlib_ratio([encode_tensor(h[t].view(1, 1, -1), "float16")[1] for t in range(h.shape[0])]),
    }


def kv_memory(config) -> dict:
    """KV bytes of one 2048-token session over all blocks, and sessions per GiB, per KV storage."""
    out = {}
    for name, dtype, kv in (("float32", torch.float32, "auto"), ("bfloat16", torch.bfloat16, "auto"),
                            ("int8", torch.float32, "int8")):
        nbytes = kv_bytes_per_token(config, config.n_blocks, dtype, kv) * SESSION_TOKENS
        out[name] = {"bytes_per_session": nbytes, "sessions_per_gib": 2**30 / nbytes}
    return out


@torch.inference_mode()
def decode_ms(span: SpanModel, kv_dtype: str, context: int, steps: int = 6) -> float:
    """Median time of one decode step through the whole span with `context` positions cached."""
    cache = span.new_cache(context + steps + 1, kv_dtype=kv_dtype)
    g = torch.Generator().manual_seed(0)
    span(torch.randn(1, context, span.config.hidden_size, generator=g), cache, 0)
    timings = []
    for p in range(context, context + steps):
        started = time.perf_counter()
        span(torch.randn(1, 1, span.config.hidden_size, generator=g), cache, p)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[1:]) * 1000


def bench_model(model: str, n_positions: int, timing_context: int) -> dict:
    source = resolve_model(model)
    config = read_config(source)
    n = config.n_blocks
    whole = SpanModel(config, load_blocks(source, config, 0, n, torch.float32), 0, n, torch.float32)
    head = ModelHead(config, load_head(source, config, torch.float32), torch.float32)
    cuts = [0, round(n / 3), round(2 * n / 3), n]
    spans = [whole.view(cuts[i], cuts[i + 1]) for i in range(3)]
    ids = text_ids(load_tokenizer(source), config, n_positions)
    finals, seconds = {}, {}
    for name, wire, kv in VARIANTS:
        started = time.perf_counter()
        finals[name], boundaries = run_chain(head, spans, ids[:-1], wire, kv)
        seconds[name] = time.perf_counter() - started
        if name == VARIANTS[0][0]:
            delta = delta_study(boundaries[1][0])  # what A sends to B
        print(f"{model}: {name} ran in {seconds[name]:.1f} s", flush=True)
    quality = compare(head, finals, ids[1:])
    for name, wire, kv in VARIANTS:
        quality[name].update(wire=wire, kv_cache=kv)
    return {
        "model": model, "n_blocks": n, "hidden_size": config.hidden_size, "split": cuts, "positions": n_positions,
        "quality": quality, "wire_bytes_per_token_per_hop": wire_bytes(config.hidden_size),
        "delta_encoding": delta, "kv_memory_2048_token_session": kv_memory(config),
        "decode_ms_per_token": {"context": timing_context, "kv auto (fp32)": decode_ms(whole, "auto", timing_context),
                                "kv int8": decode_ms(whole, "int8", timing_context)},
        "chain_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting for CI: smollm2 only, 64 positions")
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    models = ["smollm2-135m"] if args.quick else args.models.split(",")
    positions = 64 if args.quick else args.positions
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "compression", "quick": args.quick, "text": str(TEXT_PATH), "compute_dtype": "float32",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "targets": {"int8_top1_agreement": ">= 0.99", "int8_bytes_per_hop_vs_fp32": "<= 0.3"},
        "models": [bench_model(m, positions, 64 if args.quick else SESSION_TOKENS) for m in models],
    }
    (out / "compression.json").write_text(json.dumps(results, indent=2))
    (out / "compression.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [f"# Compression benchmark ({'quick, ' if r['quick'] else ''}teacher forcing, fp32 compute, "
             f"{r['machine']['cpus']} CPUs)", "",
             "Quality vs the uncompressed (fp32 wire, fp32 KV) run; the wire is applied at all four crossings of a "
             "3-way split.", ""]
    for m in r["models"]:
        wire = m["wire_bytes_per_token_per_hop"]
        lines += [f"## {m['model']} ({m['positions']} positions, split {m['split']})", "",
                  "| variant | bytes/token/hop (payload) | frame | frame vs fp32 | top-1 agreement | mean KL (nats) "
                  "| perplexity |", "|---|---|---|---|---|---|---|"]
        for name, q in m["quality"].items():
            w = wire[q["wire"]]
            lines.append(f"| {name} | {w['payload']} | {w['frame']} | {w['frame_vs_fp32']:.3f}x | "
                         f"{q['top1_agreement'] * 100:.2f}% | {q['mean_kl']:.2e} | {q['perplexity']:.3f} |")
        kv = m["kv_memory_2048_token_session"]
        d = m["delta_encoding"]
        t = m["decode_ms_per_token"]
        lines += ["", "| KV cache storage | MiB per 2048-token session (all blocks) | sessions per GiB |", "|---|---|---|"]
        lines += [f"| {name} | {v['bytes_per_session'] / 2**20:.1f} | {v['sessions_per_gib']:.1f} |" for name, v in kv.items()]
        lines += ["", f"Decode step through all blocks at context {t['context']}: {t['kv auto (fp32)']:.1f} ms "
                      f"(fp32 KV) vs {t['kv int8']:.1f} ms (int8 KV).", "",
                  f"Delta encoding at A -> B: consecutive positions differ by {d['mean_relative_step'] * 100:.0f}% "
                  f"of their norm; int8 relative error {d['int8_relative_error_direct']:.2e} direct vs "
                  f"{d['int8_relative_error_delta']:.2e} delta; zlib leaves {d['zlib_ratio_int8_direct'] * 100:.0f}% "
                  f"(direct) vs {d['zlib_ratio_int8_delta'] * 100:.0f}% (delta) of the int8 payload, "
                  f"{d['zlib_ratio_fp16'] * 100:.0f}% of fp16.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
