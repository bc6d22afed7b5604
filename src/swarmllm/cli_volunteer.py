"""`swarmllm volunteer`: printing and flag handling only (the work: swarmllm/volunteer/).

    swarmllm volunteer [TOKEN] [--initial-peers M] [caps...] [--dry-run [--json]]

1. where the swarm is: the invite token, else --initial-peers, else the swarm found on the local
   network (mDNS; none found = a new swarm of one);
2. survey: the machine, the swarm's coverage, the plan (volunteer/run.py survey);
3. with --dry-run: print them (and the equivalent `swarmllm serve` line) and stop;
4. else fetch the planned model's package if it is not on disk (pip's own progress bar), and serve
   until Ctrl-C / SIGTERM, which drain the sessions and leave.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


def _peers(args) -> list[str]:
    from swarmllm.cli import UsageError, _initial_peers

    if args.token:
        from swarmllm.protocol.invite import InviteError, parse_invite

        try:
            invite = parse_invite(args.token, time.time())
        except InviteError as e:
            raise UsageError(str(e)) from None
        if args.model and invite.models and args.model not in invite.models:
            raise UsageError(f"this swarm serves {', '.join(invite.models)}, not {args.model}")
        return list(invite.peers)
    peers = _initial_peers(args, may_start=True, listen_host=args.host)
    if peers:
        return peers
    from swarmllm.protocol.invite import PUBLIC_BOOTSTRAP_PEERS

    listed = os.environ.get("SWARMLLM_BOOTSTRAP_PEERS")
    public = [p for p in listed.replace(",", " ").split()] if listed is not None else list(PUBLIC_BOOTSTRAP_PEERS)
    if public:
        print(f"joining the public swarm through {len(public)} bootstrap peer(s)", file=sys.stderr, flush=True)
    else:
        print("no invite token, --initial-peers or swarm on the local network, and no public bootstrap peers are "
              "published yet: this node starts a swarm of its own", file=sys.stderr, flush=True)
    return public


def _caps(args):
    from swarmllm.volunteer.plan import Caps
    from swarmllm.volunteer.schedule import parse_schedule

    parse_schedule(args.schedule)  # a ValueError sentence before anything starts
    return Caps(max_memory_bytes=args.max_memory, max_gpu_memory_bytes=args.max_gpu_memory, threads=args.threads,
                max_upload_bps=args.max_upload, max_download_bps=args.max_download,
                schedule=args.schedule, when_idle=args.when_idle, busy_cpu_percent=args.busy_cpu)


def _print_survey(survey, argv) -> None:
    m = survey.machine
    gpus = ", ".join(f"{g.name} ({g.backend}, {g.memory_bytes / 2**30:.1f} GiB)" for g in m.gpus) or "none"
    print(f"machine: {m.cpu_model}, {m.physical_cores} cores ({m.logical_cores} threads), "
          f"{' '.join(m.isa) or 'no ISA extensions read'}; {m.memory_bytes / 2**30:.1f} GiB memory "
          f"({m.available_bytes / 2**30:.1f} free); GPUs: {gpus}; {m.disk_free_bytes / 2**30:.0f} GiB free disk")
    for row in survey.coverage:
        counts = row["servers_per_block"]
        print(f"swarm: {row['model']}: {sum(1 for c in counts if c)}/{row['n_blocks']} blocks served "
              f"(weakest by {min(counts, default=0)} servers), demand {row['demand_tokens_per_min']:.0f} tokens/min")
    if survey.plan is None:
        print(f"plan: none: {survey.problem}")
        return
    p = survey.plan
    print(f"plan: {p.model_id} blocks [{p.start}, {p.end}) on {p.device} in {p.dtype}, {p.threads} threads, "
          f"{p.memory_bytes / 2**20:.0f} MiB"
          + (f", {p.tokens_per_second:.1f} tokens/s through its span" if p.tokens_per_second else "")
          + (f", {p.download_bytes / 2**20:.0f} MiB to fetch" if p.download_bytes else ""))
    for reason in p.reasons:
        print(f"  - {reason}")
    print("would run: " + " ".join(argv))


def cmd_volunteer(args) -> int:
    from swarmllm.cli import UsageError, _install
    from swarmllm.models.catalog import CATALOG
    from swarmllm.volunteer.run import run_volunteer, serve_argv, server_config, survey
    from swarmllm.volunteer.updater import config_from_flags, restart

    caps = _caps(args)
    peers = _peers(args)
    if args.model is not None and args.model not in CATALOG:
        raise UsageError(f"--model {args.model!r} is not a catalog model (see `swarmllm models`); for a file or URL "
                         "use `swarmllm serve --model`")
    found = asyncio.run(survey(peers, caps, args.model, measure=not (args.dry_run and args.no_measure)))
    if found.plan is None:
        if args.dry_run and args.json:
            print(json.dumps({**found.to_json(), "would_run": None}, indent=2))
            return 2
        raise UsageError(found.problem)
    config = server_config(found.plan, caps, peers, args.model, host=args.host, port=args.port,
                           identity_path=args.identity, node_name=args.name, lan=not args.no_lan,
                           swarm_name=args.swarm_name, status_port=args.status_port)
    try:
        update = config_from_flags(args.auto_update, args.update_check, args.release_index)
    except ValueError as e:
        raise UsageError(str(e)) from None
    argv = serve_argv(config, auto_update=update is not None)
    if args.dry_run:
        if args.json:
            print(json.dumps({**found.to_json(), "caps": caps.to_json(), "would_run": argv}, indent=2))
        else:
            _print_survey(found, argv)
        return 0
    _print_survey(found, argv)
    entry = CATALOG[found.plan.model_id]
    if entry.installed is not None and entry.installed() is None:
        _install(entry, quiet=False)  # pip's progress bar: the volunteer sees the download move

    def on_ready(status) -> None:
        from swarmllm.cli import _print_ready

        print(f"volunteering: node {status.peer_id} serves {status.model_id} blocks [{status.start}, {status.end}) "
              f"at {status.throughput:.1f} tokens/s, ready {status.startup_seconds:.1f} s after start"
              + (f"; paused: {status.paused_reason}" if status.paused_reason else "") + ". Ctrl-C drains and leaves.",
              flush=True)
        if config.status_port:
            print(f"your node's page: http://127.0.0.1:{config.status_port}/", flush=True)
        _print_ready({"role": "volunteer", "peer_id": status.peer_id, "model": status.model_id,
                      "start": status.start, "end": status.end, "addresses": status.addresses,
                      "throughput": status.throughput, "startup_seconds": status.startup_seconds,
                      "state": status.state, "paused_reason": status.paused_reason})

    if asyncio.run(run_volunteer(config, caps, on_ready, args.idle_check, update)):
        print("restarting into the new release", file=sys.stderr, flush=True)
        restart()
    print("left the swarm", file=sys.stderr, flush=True)
    return 0
