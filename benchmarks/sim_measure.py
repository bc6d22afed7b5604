"""Real measurements for calibrating the swarm simulator (issue 17): the measured half.

Two things, both importable (benchmarks/sim_calibration.py runs them, then the simulator on the
same configurations, and compares):

- `measure_profile(threads)`: compute costs timed in this process with `threads` torch threads,
  smollm2-135m in the nodes' default dtype and quant (`--dtype auto`: bfloat16 on a CPU with
  native bf16, else float32; `--quant none`): a node's decode step per block for batches of 1,
  2, 4, 8 sessions' single positions (`SpanModel.forward_many`, what the node's StepBatcher
  runs), short steps of 2..9 positions (speculative verify steps), prefill per prompt length,
  the client's own per-token work (embedding, LM head, greedy sampling, tokenizer decode, wire
  encode/decode), and the whole model's single-process decode as a cross-check.
- `measure_all(repeats, quick)`: the configurations C1..C11 (`CONFIGS`) run for real: bootstrap
  and node processes on loopback (LocalSwarm), some behind netem relays, each generation
  greedy from the same chat prompt (C8: the code-like prompt of benchmarks/speculative.py).

Every figure is the median of `repeats` runs (all runs are kept under "runs"). "decode tokens/s"
is `Timings.decode_tokens_per_s`, what `swarmllm generate --json` prints: (generated tokens - 1)
/ (last token's time - first token's time); "TTFT" is `Timings.ttft_s`: generation start
(session already open) -> first token, so prefill + head, without opening the session
(`open_ms`, kept apart). Swarms that configurations share are started once; everything is
stopped at the end, on error too.

    python benchmarks/sim_measure.py [--quick] [--repeats N] [--only C3,C4] [--out benchmarks/results]

JSON layout: top level `new_tokens`, `repeats`, `machine` (cpus, client_torch_threads), load averages,
`profiles` {threads: measure_profile's dict} for every thread count a node or the client uses, and
`configs` {C1..C11: row}. A row: spans_per_node, threads_per_node, max_batch_per_node, nodes (peer
ids, netem link profile, announced throughput), network, decoding, ring, sessions, prompt_tokens,
generated_tokens, wire_dtype, bytes_per_token_per_hop, prefill_bytes_per_hop, ping_rtt_ms {node:
ms}, load_average_1min_before/after, the medians decode_tokens_per_second, ttft_ms, open_ms,
total_ms, and `runs` (each run's figures, route and token ids). C8 adds `speculation` (rounds,
drafted, accepted, tokens_per_step, ...); C9/C10 per_session_decode_tokens_per_second and
per_session_ttft_ms (and per run a timeline of every session); C11 failover_seconds,
positions_replayed, `unfaulted` (the same chain without a kill) and per run the failover trace.

Writes OUT/sim_measured.json and prints a table. Nothing here asserts a speed: the machine may
be shared, so the load average is recorded before and after every configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import speculative as speculative_bench  # noqa: E402
import wan as wan_bench  # noqa: E402

from swarmllm.client.generation import GenerationOptions, Generator  # noqa: E402
from swarmllm.client.swarm_client import SwarmClient  # noqa: E402
from swarmllm.engine.blocks import SequenceStep  # noqa: E402
from swarmllm.engine.dtypes import dtype_name  # noqa: E402
from swarmllm.engine.sampling import Sampler, SamplingParams  # noqa: E402
from swarmllm.harness.local_swarm import LocalSwarm, even_spans  # noqa: E402
from swarmllm.protocol import Step, decode_frame, decode_tensor, encode_frame, encode_tensor  # noqa: E402
from swarmllm.runtime import ClientModel, LocalModel  # noqa: E402

MODEL = wan_bench.MODEL
PROMPT = wan_bench.PROMPT                           # the prose prompt of pipeline.py and wan.py
CODE_PROMPT = speculative_bench.PROMPTS["code"][0]  # replies repeat its identifiers: n-gram drafts hit
NEW_TOKENS, QUICK_TOKENS = 48, 16
BATCH_SIZES = (1, 2, 4, 8)
SHORT_STEPS = (2, 3, 4, 5, 6, 7, 8, 9)              # verify steps: k drafts + 1, k <= 8
DRAFT_K = 8                                         # benchmarks/speculative.py's default


@dataclass(frozen=True)
class SwarmSpec:
    """One swarm the configurations run on: node spans, WAN profile of the nodes, node flags."""

    spans: tuple[tuple[int, int], ...]
    network: Optional[str] = None  # netem profile of every node (None: plain loopback)
    node_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfigSpec:
    swarm: str
    description: str
    decoding: str = "plain"        # "plain", "ring" or "ngram" (speculative)
    sessions: int = 1              # concurrent sessions (C9, C10)
    prompt: str = PROMPT
    kill_middle: bool = False      # C11: SIGKILL the middle server a third of the way through


SWARMS = {
    "one": SwarmSpec(((0, 30),)),
    "two": SwarmSpec(tuple(even_spans(30, 2))),
    "three": SwarmSpec(tuple(even_spans(30, 3))),
    "three-no-batching": SwarmSpec(tuple(even_spans(30, 3)), node_args=("--max-batch", "1")),
    "six": SwarmSpec(tuple(even_spans(30, 6))),
    "three-continent": SwarmSpec(tuple(even_spans(30, 3)), network="continent"),
    "three-plus-spare": SwarmSpec(((0, 10), (10, 20), (20, 30), (10, 20))),
}
CONFIGS = {
    "C1": ConfigSpec("one", "1 node [0,30), plain decoding, loopback, 1 session"),
    "C2": ConfigSpec("two", "2 nodes, even spans, plain, loopback"),
    "C3": ConfigSpec("three", "3 nodes, even spans, plain, loopback"),
    "C4": ConfigSpec("three", "3 nodes, even spans, ring decoding, loopback", decoding="ring"),
    "C5": ConfigSpec("six", "6 nodes, 5 blocks each, plain, loopback"),
    "C6": ConfigSpec("three-continent", "3 nodes behind 'continent' netem relays, plain"),
    "C7": ConfigSpec("three-continent", "3 nodes behind 'continent' netem relays, ring", decoding="ring"),
    "C8": ConfigSpec("three", "3 nodes, loopback, speculative n-gram drafts, code-like prompt", decoding="ngram",
                     prompt=CODE_PROMPT),
    "C9": ConfigSpec("three", "3 nodes, loopback, 4 concurrent sessions, batching on (--max-batch 16)", sessions=4),
    "C10": ConfigSpec("three-no-batching", "3 nodes, loopback, 4 concurrent sessions, batching off (--max-batch 1)",
                      sessions=4),
    "C11": ConfigSpec("three-plus-spare", "3-node chain + a spare [10,20); the middle server used is SIGKILLed "
                      "after a third of the tokens, plain", kill_middle=True),
}


def expected_node_threads(n_nodes: int) -> int:
    """Torch threads LocalSwarm gives each node on this machine (its rule; the started nodes' own
    --num-threads is recorded per configuration)."""
    return max(1, (os.cpu_count() or 1) // max(1, n_nodes))


# --- compute profile ------------------------------------------------------------------------

def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _filled_cache(span, length: int, max_length: int):
    cache = span.new_cache(max_length)
    span.forward(torch.randn(1, length, span.config.hidden_size).to(span.dtype), cache, 0)
    return cache


def measure_profile(threads: int, prompt_lengths: Optional[list[int]] = None, repeats: int = 15,
                    context: int = 64, model: Optional[LocalModel] = None) -> dict:
    """Compute costs in this process with `threads` torch threads (see the module docstring).

    Decode steps run at position `context` (rolled back each repeat, so the context stays put);
    prompt_lengths default to the prompts' lengths that measure_all uses."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        local = model or LocalModel.load(MODEL)  # --dtype auto, --quant none: what a node loads
        lengths = prompt_lengths or sorted({len(local.prompt_ids(PROMPT)), len(local.prompt_ids(CODE_PROMPT))})
        return {"threads": threads, "dtype": dtype_name(local.dtype), "quant": local.quant,
                "row_tile": local.span.row_tile, "context_position": context, "repeats": repeats,
                **_node_costs(local, lengths, repeats, context), "client": _client_costs(local, repeats),
                "whole_model": _whole_model(local, threads, repeats)}
    finally:
        torch.set_num_threads(before)


def _node_costs(local: LocalModel, prompt_lengths: list[int], repeats: int, context: int) -> dict:
    D = local.config.hidden_size
    span = local.span.view(0, 10)  # a 3-node chain's span; per-block figures below divide by 10
    max_length = context + 16

    caches = [_filled_cache(span, context, max_length) for _ in range(max(BATCH_SIZES))]
    rows = [torch.randn(1, D).to(span.dtype) for _ in caches]
    batch = {}
    for n in BATCH_SIZES:
        steps = [SequenceStep(rows[i], caches[i], context) for i in range(n)]
        seconds = _median_seconds(lambda: span.forward_many(steps), repeats)
        batch[str(n)] = {"seconds_per_block": seconds / span.n_blocks,
                         "seconds_per_block_per_position": seconds / span.n_blocks / n}

    by_span = {}
    for blocks in (5, 10, 15, 30):  # batch 1: is the cost per block the same whatever the span?
        sub = local.span.view(0, blocks)
        cache = _filled_cache(sub, context, max_length)
        hidden = torch.randn(1, 1, D).to(sub.dtype)
        by_span[str(blocks)] = _median_seconds(lambda: sub.forward(hidden, cache, context), repeats) / blocks

    short = {}
    for T in SHORT_STEPS:
        hidden = torch.randn(1, T, D).to(span.dtype)
        short[str(T)] = _median_seconds(lambda: span.forward(hidden, caches[0], context), repeats) / span.n_blocks

    prefill = {}
    for T in prompt_lengths:
        cache = span.new_cache(T + 1)
        hidden = torch.randn(1, T, D).to(span.dtype)
        seconds = _median_seconds(lambda: span.forward(hidden, cache, 0), max(3, repeats // 3)) / span.n_blocks
        prefill[str(T)] = {"seconds_per_block": seconds, "seconds_per_block_per_position": seconds / T}
    return {"decode_batch": {"span_blocks": span.n_blocks, "by_batch_size": batch},
            "decode_seconds_per_block_by_span_blocks": by_span,
            "short_step_seconds_per_block": short, "prefill": prefill}


def _client_costs(local: ClientModel, repeats: int) -> dict:
    """The client's own work per token, as engine/generation.py's plain loop and session.py run it."""
    head, D = local.head, local.config.hidden_size
    ids = local.prompt_ids(PROMPT)
    hidden = torch.randn(1, 1, D).to(local.dtype)
    logits = head.logits(hidden)[0, -1]
    sampler = Sampler(SamplingParams())
    generated = local.tokenizer.encode(" The bees build hexagonal cells because the shape uses the least wax "
                                       "for the most storage, and the walls meet at angles that share")[:24]
    wire = "bfloat16" if local.dtype == torch.bfloat16 else "float32"
    meta, raw = encode_tensor(hidden, wire)
    frame = encode_frame(Step(session_id="s" * 32, step_id=1000, start_position=1000, tensor=meta), raw)

    def wire_encode():
        m, r = encode_tensor(hidden, wire)
        return encode_frame(Step(session_id="s" * 32, step_id=1000, start_position=1000, tensor=m), r)

    def wire_decode():
        message, payload = decode_frame(frame)
        return decode_tensor(message.tensor, payload, local.dtype)

    embed = _median_seconds(lambda: head.embed([[ids[-1]]]), repeats)
    lm_head = _median_seconds(lambda: head.logits(hidden), repeats)
    sample = _median_seconds(lambda: sampler.sample(logits, ids), repeats)
    decode_text = _median_seconds(lambda: local.tokenizer.decode(generated), repeats)
    rows = {}
    for n in BATCH_SIZES:  # N sessions' rows in one call (a batched head, benchmarks/batching.py)
        many = torch.randn(n, 1, D).to(local.dtype)
        rows[str(n)] = _median_seconds(lambda: head.logits(many), max(5, repeats // 2))
    prompt = _median_seconds(lambda: head.embed([ids]), repeats)
    return {"embed_one_token_seconds": embed, "embed_prompt_seconds": prompt, "embed_prompt_tokens": len(ids),
            "lm_head_one_row_seconds": lm_head, "greedy_sample_seconds": sample,
            "head_and_sample_per_token_seconds": lm_head + sample,
            "tokenizer_decode_24_tokens_seconds": decode_text,  # the loop decodes all generated ids each token
            "wire_dtype": wire, "wire_encode_step_seconds": _median_seconds(wire_encode, repeats),
            "wire_decode_step_seconds": _median_seconds(wire_decode, repeats),
            "per_token_seconds": embed + lm_head + sample + decode_text,
            "lm_head_seconds_by_rows": rows}


def _whole_model(local: LocalModel, threads: int, repeats: int) -> dict:
    """All 30 blocks in one process: blocks only (wan.py's bound) and the engine's whole loop."""
    blocks = wan_bench.measure_compute(threads)
    ids = local.prompt_ids(PROMPT)
    runs = [local.generate(ids, SamplingParams(max_new_tokens=24)).timings for _ in range(max(2, repeats // 5))]
    tps = statistics.median(t.decode_tokens_per_s for t in runs)
    return {"blocks_only_decode_seconds_per_position": blocks, "engine_decode_tokens_per_second": tps,
            "engine_decode_seconds_per_token": 1 / tps if tps else None,
            "engine_ttft_seconds": statistics.median(t.ttft_s for t in runs), "engine_prompt_tokens": len(ids)}


# --- real swarms ------------------------------------------------------------------------------

def _load() -> float:
    return os.getloadavg()[0]


def _arg(args: list[str], flag: str) -> Optional[str]:
    return args[args.index(flag) + 1] if flag in args else None


def step_frame_bytes(wire: str, positions: int, hidden: int = 576) -> int:
    """Bytes of one Step frame of `positions` positions (a prefill's) in `wire` format; one position:
    wan.frame_bytes, the `bytes_per_token_per_hop` of every configuration."""
    meta, raw = encode_tensor(torch.zeros(1, positions, hidden).normal_(), wire)
    return len(encode_frame(Step(session_id="s" * 32, step_id=1000, start_position=0, tensor=meta), raw))


def _nodes_info(swarm: LocalSwarm) -> list[dict]:
    return [{"name": n.name, "blocks": [n.ready["start"], n.ready["end"]], "peer_id": n.ready["peer_id"],
             "threads": int(_arg(n.args, "--num-threads") or 0) or None,
             "max_batch": int(_arg(n.args, "--max-batch") or 16),
             "link_profile": (lambda p: p and {"name": p.name, "rtt_ms": p.rtt_ms, "rate_mbit": p.rate_mbit})(
                 swarm.profiles.get(n.name)),
             "announced_tokens_per_second": n.ready.get("throughput")} for n in swarm.nodes if n.ready]


def _ping_ms(client: SwarmClient, swarm: LocalSwarm) -> dict[str, Optional[float]]:
    peers = {n.ready["peer_id"]: n.name for n in swarm.nodes if n.alive and n.ready}
    measured = client.ping(list(peers), timeout=10)
    return {name: (measured[p] * 1000 if p in measured else None) for p, name in peers.items()}


def _options(spec: ConfigSpec, tokens: int) -> GenerationOptions:
    sampling = SamplingParams(max_new_tokens=tokens)
    if spec.decoding == "ngram":
        return GenerationOptions(sampling, speculative="ngram", draft_k=DRAFT_K)
    return GenerationOptions(sampling, ring=spec.decoding == "ring")


def _run_record(result, run) -> dict:
    t = result.timings
    session = run.session.session
    return {"decode_tokens_per_second": t.decode_tokens_per_s, "ttft_ms": t.ttft_s * 1000,
            "open_ms": t.open_s * 1000, "total_ms": t.total_s * 1000, "prompt_tokens": result.prompt_tokens,
            "generated_tokens": result.generated_tokens, "decoding": result.decoding,
            "wire_dtype": session.wire_dtype, "route": [[h.peer_id[-8:], h.start, h.end] for h in result.route],
            "speculation": result.speculation.as_dict() if result.speculation else None,
            "token_ids": result.token_ids}


def _one_generation(generator: Generator, ids: list[int], options: GenerationOptions,
                    on_token: Optional[Callable[[int, object], None]] = None) -> dict:
    with generator.start(ids, options) as run:
        for i, _ in enumerate(run):
            if on_token is not None:
                on_token(i + 1, run)
    record = _run_record(run.result(), run)
    record["failovers"] = [{"peer_ids": [p[-8:] for p in e.peer_ids], "code": e.code, "blocks": list(e.blocks),
                            "positions_replayed": e.position, "replacement": [p[-8:] for p in e.replacement],
                            "seconds": e.seconds, "trace": e.trace} for e in run.session.failovers]
    return record


def _concurrent(generator: Generator, ids: list[int], options: GenerationOptions, sessions: int) -> dict:
    """`sessions` generations at once, each in its own thread as the gateway runs them; all sessions
    are opened first, then they start together."""
    runs: list = [None] * sessions
    opened = threading.Barrier(sessions)
    stamps: list[dict] = [{} for _ in range(sessions)]
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            with generator.start(ids, options) as run:
                opened.wait(60)
                stamps[index]["start"] = time.perf_counter()
                for i, _ in enumerate(run):
                    if i == 0:
                        stamps[index]["first"] = time.perf_counter()
                stamps[index]["end"] = time.perf_counter()
            runs[index] = _run_record(run.result(), run)
        except BaseException as e:  # re-raised below, after every thread has ended
            opened.abort()
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    t0, t_end = min(s["start"] for s in stamps), max(s["end"] for s in stamps)
    decode_wall = max(s["end"] for s in stamps) - min(s["first"] for s in stamps)
    decode_tokens = sum(r["generated_tokens"] - 1 for r in runs)
    return {"decode_tokens_per_second": decode_tokens / decode_wall,  # aggregate over the sessions
            "ttft_ms": statistics.mean(r["ttft_ms"] for r in runs),
            "open_ms": statistics.mean(r["open_ms"] for r in runs),
            "total_ms": (t_end - t0) * 1000,
            "prompt_tokens": runs[0]["prompt_tokens"], "generated_tokens": runs[0]["generated_tokens"],
            "decoding": runs[0]["decoding"], "wire_dtype": runs[0]["wire_dtype"], "speculation": None,
            "per_session_decode_tokens_per_second": [r["decode_tokens_per_second"] for r in runs],
            "per_session_ttft_ms": [r["ttft_ms"] for r in runs],
            "all_tokens_per_second_wall": sum(r["generated_tokens"] for r in runs) / (t_end - t0),
            "timeline_ms": [{k: (v - t0) * 1000 for k, v in s.items()} for s in stamps],
            "routes": [r["route"] for r in runs], "same_tokens_every_session":
                all(r["token_ids"] == runs[0]["token_ids"] for r in runs), "token_ids": runs[0]["token_ids"]}


def _killed_run(swarm: LocalSwarm, model: ClientModel, ids: list[int], options: GenerationOptions,
                tokens: int) -> dict:
    """C11: a fresh client (no bans left from an earlier repeat), a 2-token warm-up, then one
    generation; when its `tokens // 3`-th token arrives, the middle server it uses is SIGKILLed
    with its p2p daemon (from another thread: the harness's wait for the process to exit is not
    the client's time); the node is restarted after the run (same identity) for the next repeat."""
    kill_after = max(2, tokens // 3)
    killed: dict = {}

    def kill(node) -> None:
        started = time.perf_counter()
        swarm.kill(node, signal.SIGKILL)
        killed["kill_seconds"] = time.perf_counter() - started

    def on_token(n: int, run) -> None:
        if n != kill_after:
            return
        middle = next(h for h in run.route if h.start <= 15 < h.end)  # the hop serving the middle blocks
        node = next(p for p in swarm.nodes if p.ready and p.ready["peer_id"] == middle.peer_id)
        killed.update(node=node, name=node.name, peer_id=middle.peer_id[-8:], after_tokens=n,
                      thread=threading.Thread(target=kill, args=(node,)))
        killed["thread"].start()

    with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
        ping = _ping_ms(client, swarm)
        generator = Generator.swarm(model, client)
        _warm_up(generator, {"plain"})
        record = _one_generation(generator, ids, options, on_token)
    if "thread" in killed:
        killed.pop("thread").join()
        swarm.restart(killed.pop("node"))
    record.update(killed=killed, ping_rtt_ms=ping,
                  failover_seconds=sum(f["seconds"] for f in record["failovers"]),
                  positions_replayed=sum(f["positions_replayed"] for f in record["failovers"]))
    return record


MEDIAN_KEYS = ("decode_tokens_per_second", "ttft_ms", "open_ms", "total_ms", "failover_seconds",
               "positions_replayed", "all_tokens_per_second_wall")


def _summary(name: str, spec: ConfigSpec, runs: list[dict], swarm: LocalSwarm, ping: dict,
             load: tuple[float, float], extra: dict) -> dict:
    medians = {k: statistics.median(r[k] for r in runs) for k in MEDIAN_KEYS if all(k in r for r in runs)}
    last = runs[-1]
    nodes = _nodes_info(swarm)
    network = SWARMS[spec.swarm].network
    out = {"name": name, "description": spec.description, "swarm": spec.swarm, "network": network or "loopback",
           "nodes": nodes, "spans_per_node": [n["blocks"] for n in nodes],
           "threads_per_node": [n["threads"] for n in nodes], "max_batch_per_node": [n["max_batch"] for n in nodes],
           "decoding_requested": spec.decoding, "decoding": last["decoding"], "ring": last["decoding"] == "ring",
           "sessions": spec.sessions, "prompt_tokens": last["prompt_tokens"],
           "generated_tokens": last["generated_tokens"], "wire_dtype": last["wire_dtype"],
           "bytes_per_token_per_hop": wan_bench.frame_bytes(last["wire_dtype"]),
           "prefill_bytes_per_hop": step_frame_bytes(last["wire_dtype"], last["prompt_tokens"]),
           "ping_rtt_ms": ping, "load_average_1min_before": load[0], "load_average_1min_after": load[1],
           **medians, **extra, "runs": runs}
    if spec.decoding == "ngram":
        spec_runs = [r["speculation"] for r in runs]
        out["speculation"] = {k: statistics.median(s[k] for s in spec_runs) for k in spec_runs[0]
                              if isinstance(spec_runs[0][k], (int, float))}
    if spec.sessions > 1:
        out["per_session_decode_tokens_per_second"] = statistics.median(
            statistics.mean(r["per_session_decode_tokens_per_second"]) for r in runs)
        out["per_session_ttft_ms"] = statistics.median(statistics.mean(r["per_session_ttft_ms"]) for r in runs)
    return out


def _run_config(name: str, spec: ConfigSpec, swarm: LocalSwarm, generator: Generator,
                repeats: int, tokens: int, ping: dict, reference: dict) -> dict:
    ids = generator.model.prompt_ids(spec.prompt)
    options = _options(spec, tokens)
    load_before = _load()
    extra: dict = {}
    if spec.kill_middle:
        unfaulted = _one_generation(generator, ids, options)  # the same chain without a fault, same swarm
        runs = [_killed_run(swarm, generator.model, ids, options, tokens) for _ in range(repeats)]
        extra = {"unfaulted": {k: unfaulted[k] for k in ("decode_tokens_per_second", "ttft_ms", "route")},
                 "same_tokens_as_unfaulted": all(r["token_ids"] == unfaulted["token_ids"] for r in runs)}
        ping = runs[-1]["ping_rtt_ms"]
    elif spec.sessions > 1:
        runs = [_concurrent(generator, ids, options, spec.sessions) for _ in range(repeats)]
    else:
        runs = [_one_generation(generator, ids, options) for _ in range(repeats)]
    key = (spec.prompt, tokens)
    if key in reference:  # greedy: every configuration must produce the first one's tokens
        extra["same_tokens_as"] = {"config": reference[key][0],
                                   "equal": all(r["token_ids"] == reference[key][1] for r in runs)}
    else:
        reference[key] = (name, runs[0]["token_ids"])
    return _summary(name, spec, runs, swarm, ping, (load_before, _load()), extra)


def _warm_up(generator: Generator, decodings: set[str]) -> None:
    """First session, kernels, a ring's head on the last server: not in the measured runs."""
    ids = generator.model.prompt_ids("Hi")
    for decoding in sorted(decodings):
        generator.generate(ids, _options(ConfigSpec("", "", decoding=decoding), 3))


def measure_all(repeats: int = 2, quick: bool = False, only: Optional[list[str]] = None,
                log_dir: Optional[Path] = None, profiles: bool = True) -> dict:
    """Run the configurations (`only`: a subset of CONFIGS' names) and the compute profiles for the
    thread counts they use; the returned dict is the JSON layout of the module docstring."""
    names = [n for n in CONFIGS if only is None or n in only]
    unknown = set(only or ()) - set(CONFIGS)
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(sorted(unknown))}; use some of {', '.join(CONFIGS)}")
    tokens = QUICK_TOKENS if quick else NEW_TOKENS
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="swarmllm-sim-measure-"))
    started, load_before = time.perf_counter(), _load()
    client_threads = torch.get_num_threads()  # the client here keeps torch's default, as the CLI does
    report: dict = {"benchmark": "sim_measure", "model": MODEL, "quick": quick, "repeats": repeats,
                    "new_tokens": tokens, "prompt": PROMPT, "code_prompt": CODE_PROMPT,
                    "decode_tokens_per_second_definition": "Timings.decode_tokens_per_s as `swarmllm generate "
                    "--json` prints it: (generated - 1) / (last token time - first token time); C9/C10: the "
                    "sessions' decode tokens summed / (last session's end - first session's first token)",
                    "ttft_definition": "generation start (session open) -> first token: prefill + head",
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                                "client_torch_threads": client_threads},
                    "load_average_1min_before": load_before, "profiles": {}, "configs": {}}
    model = LocalModel.load(MODEL)
    if profiles:
        wanted = {client_threads} | {expected_node_threads(len(SWARMS[CONFIGS[n].swarm].spans)) for n in names}
        for threads in sorted(wanted):
            report["profiles"][str(threads)] = measure_profile(threads, repeats=7 if quick else 15, model=model)
    client_model = ClientModel(model.source, model.config, model.head, model.tokenizer, model.dtype, model.quant)
    reference: dict = {}
    for swarm_name in dict.fromkeys(CONFIGS[n].swarm for n in names):
        group = [n for n in names if CONFIGS[n].swarm == swarm_name]
        spec = SWARMS[swarm_name]
        swarm = LocalSwarm(MODEL, list(spec.spans), network=spec.network, node_args=spec.node_args,
                           log_dir=log_dir / swarm_name)
        spawned = time.perf_counter()
        try:
            swarm.start(timeout=300)
            start_seconds = time.perf_counter() - spawned
            with SwarmClient.connect(swarm.initial_peers, keep_state=False) as client:
                ping = _ping_ms(client, swarm)
                generator = Generator.swarm(client_model, client)
                _warm_up(generator, {CONFIGS[n].decoding for n in group})
                for name in group:
                    print(f"{name}: {CONFIGS[name].description}", flush=True)
                    row = _run_config(name, CONFIGS[name], swarm, generator, repeats, tokens, ping, reference)
                    row["swarm_start_seconds"] = start_seconds
                    report["configs"][name] = row
                    print(f"  {row['decode_tokens_per_second']:.1f} tokens/s, TTFT {row['ttft_ms']:.0f} ms", flush=True)
        finally:
            swarm.stop()
    report["configs"] = {n: report["configs"][n] for n in names if n in report["configs"]}
    report["load_average_1min_after"] = _load()
    report["wall_seconds"] = time.perf_counter() - started
    return report


def markdown(r: dict) -> str:
    lines = [f"# Simulator calibration: measured ({r['model']}, {r['new_tokens']} new tokens, median of "
             f"{r['repeats']}, {r['machine']['cpus']} CPUs, load {r['load_average_1min_before']:.1f} -> "
             f"{r['load_average_1min_after']:.1f})", "",
             "| config | nodes x blocks | network | decoding | sessions | decode tokens/s | TTFT (ms) | prompt | "
             "wire | bytes/hop | ping RTT (ms) | load | notes |", "|---" * 13 + "|"]
    for name, c in r["configs"].items():
        spans = " ".join(f"[{a},{b})" for a, b in c["spans_per_node"])
        rtts = [v for v in c["ping_rtt_ms"].values() if v is not None]
        notes = []
        if "speculation" in c:
            s = c["speculation"]
            notes.append(f"{s['rounds']:.0f} rounds, {s['accepted']:.0f}/{s['drafted']:.0f} accepted, "
                         f"{s['tokens_per_step']:.2f} tokens/pass")
        if "per_session_decode_tokens_per_second" in c:
            notes.append(f"per session {c['per_session_decode_tokens_per_second']:.1f} tokens/s")
        if "failover_seconds" in c:
            notes.append(f"failover {c['failover_seconds']:.2f} s, {c['positions_replayed']:.0f} positions replayed")
        if c.get("same_tokens_as") and not c["same_tokens_as"]["equal"]:
            notes.append(f"tokens differ from {c['same_tokens_as']['config']}")
        lines.append(f"| {name} | {spans} | {c['network']} | {c['decoding']} | {c['sessions']} | "
                     f"{c['decode_tokens_per_second']:.1f} | {c['ttft_ms']:.0f} | {c['prompt_tokens']} | "
                     f"{c['wire_dtype']} | {c['bytes_per_token_per_hop']} | "
                     f"{(statistics.median(rtts) if rtts else float('nan')):.2f} | "
                     f"{c['load_average_1min_before']:.1f}-{c['load_average_1min_after']:.1f} | {'; '.join(notes)} |")
    for threads, p in r["profiles"].items():
        b = p["decode_batch"]["by_batch_size"]
        lines += ["", f"Profile, {threads} thread(s), {p['dtype']}: decode ms/block "
                  + ", ".join(f"batch {n}: {v['seconds_per_block'] * 1000:.3f}" for n, v in b.items())
                  + f"; client per token {p['client']['per_token_seconds'] * 1000:.2f} ms; whole model "
                  f"{p['whole_model']['engine_decode_tokens_per_second']:.1f} tokens/s in one process"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TOKENS} new tokens instead of {NEW_TOKENS}")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (the median is reported)")
    parser.add_argument("--only", help="comma-separated configuration names, e.g. C3,C4 (default: all)")
    parser.add_argument("--no-profiles", action="store_true", help="skip the in-process compute profiles")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    only = [n.strip().upper() for n in args.only.split(",")] if args.only else None
    report = measure_all(args.repeats, args.quick, only, profiles=not args.no_profiles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim_measured.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
