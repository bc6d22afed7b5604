"""`swarmllm credits`: what this machine's node identities earned, and `credits link` (flags: cli_parser.py).

    swarmllm credits [--json]                 per identity, per gateway, per day: credits and receipts paid
    swarmllm credits link NODE --api-key K    sign "key K speaks for node NODE" with the node's key

Statements are read from the node's inbox (server/credits_inbox.py) and every one is checked
again here (signature, addressee) before it is counted. A link is printed (one JSON line, to send
to the gateway's operator) and appended to --links (default: this machine's credit-links.jsonl,
which a gateway on this machine reads). Parsing and printing only, like cli.py.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path


def cmd_credits(args) -> int:
    if args.action == "link":
        return _link(args)
    if args.action is not None:
        raise ValueError(f"unknown credits action {args.action!r}; use `swarmllm credits` or `swarmllm credits link`")
    from swarmllm.protocol.credits import envelope_from_json, verify_credit_statement
    from swarmllm.protocol.envelope import RecordRejected
    from swarmllm.server.credits_inbox import read_statements

    totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for received in read_statements(args.db):
        s = received.statement
        try:  # the stored envelope must still be what was counted
            checked = verify_credit_statement(envelope_from_json(received.envelope), s.node)
        except RecordRejected:
            continue
        if checked != s:
            continue
        day = time.strftime("%Y-%m-%d", time.gmtime(s.period_end))
        row = totals[(s.node, s.gateway, day)]
        row[0] += s.credits
        row[1] += s.receipts
        row[2] += s.forfeited_sessions
        row[3] += 1
    rows = [{"node": node, "gateway": gateway, "day": day, "credits": c, "receipts": r, "forfeited_sessions": f,
             "statements": n} for (node, gateway, day), (c, r, f, n) in sorted(totals.items())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no credit statements yet: gateways send them to a node after they verified its work")
        return 0
    widths = ("node", "gateway", "day (UTC)", "credits", "receipts", "forfeited")
    table = [widths] + [(r["node"][:16], r["gateway"][:16], r["day"], str(r["credits"]), str(r["receipts"]),
                         str(r["forfeited_sessions"])) for r in rows]
    sizes = [max(len(row[i]) for row in table) for i in range(len(widths))]
    for row in table:
        print("  ".join(cell.ljust(size) for cell, size in zip(row, sizes)).rstrip())
    return 0


def _link(args) -> int:
    from swarmllm.gateway.credit_links import default_links_path
    from swarmllm.protocol.credits import CreditLink, api_key_digest, envelope_to_json, sign_credit_link
    from swarmllm.swarm import Identity, default_identity_path

    if not args.node:
        raise ValueError("say which node: `swarmllm credits link NODE --api-key KEY` (NODE: a name such as node, "
                         "or an identity file)")
    if not args.api_key or len(args.api_key) < 16:
        raise ValueError("--api-key KEY is the gateway API key (at least 16 characters) that should get the "
                         "node's contribution")
    path = Path(args.node).expanduser()
    if not path.exists():
        path = default_identity_path(args.node)
    if not path.exists():
        raise ValueError(f"no node identity {args.node!r} on this machine ({path}); run it here first, or pass "
                         "its key file")
    identity = Identity.load(path)
    link = CreditLink(node=identity.peer_id, key_digest=api_key_digest(args.api_key), linked_at=time.time())
    line = envelope_to_json(sign_credit_link(link, public_key=identity.public_key, sign=identity.sign))
    links = Path(args.links) if args.links else default_links_path()
    links.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(links, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    print(line)
    return 0
