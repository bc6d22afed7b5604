"""Protocol version negotiation: which version two peers speak, or why they cannot talk.

Every peer speaks a range of protocol versions, [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION]
(messages.py says how releases move it). Two peers interoperate when their ranges overlap and
then speak the highest version both know; otherwise the one whose range lies wholly below the
other's must upgrade, and the refusal says so in a sentence that names both ranges:

    this node speaks protocol v8 and the client v10: upgrade this node (pip install -U swarmllm)

`negotiate` is what a server runs on an OpenSession and `overlaps` what client routing runs on
a server record; `unreadable_open_session` gives a server the same clear refusal for an
OpenSession of a much newer peer that this version cannot even parse. Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Optional

from swarmllm.protocol.errors import ErrorCode, ProtocolError
from swarmllm.protocol.messages import MAX_VERSION_NUMBER, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

VersionRange = tuple[int, int]  # (oldest, newest) protocol version a peer speaks, both inclusive

OUR_RANGE: VersionRange = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
UPGRADE_COMMAND = "pip install -U swarmllm"

# What each protocol version changed, oldest first: data, rendered into docs/protocol.md. A release that
# raises PROTOCOL_VERSION adds its line here (a unit test asserts the newest entry is PROTOCOL_VERSION).
HISTORY: dict[int, str] = {
    1: "frames are [u32 header length, little endian][header JSON][payload], without a layout byte; int8 v1.",
    2: "frames start with a layout byte (binary Step headers), int8 v2, ring decoding.",
    3: "DHT values are signed envelopes (envelope.py: Ed25519, subkey = the signer's peer id), record bodies refuse "
       "unknown fields, registry entries are one per serving peer (subkey = peer id); sessions bound to authenticated "
       "peers (OpenSession.upstream, SetUpstream, RingSpec.last_peer_id), per-peer quotas (ErrorReply.quota).",
    4: "every server signs a `StepReceipt` for every step it computes and sends it to the session's client (frame "
       "layout b\"V\", receipts.py); server records carry a `ComputeClass` (records.py) instead of the loose "
       "compute_dtype / quant / kv_dtype / software_version fields.",
    5: "OpenSession.report_outputs: a session opened with it sends the client every step's output (a StepResult from "
       "every server of the chain, not only the last; beside the ring's TokenResult too), so a verifying client can "
       "re-run each span from its own inputs on an independent server (client/verification.py).",
    6: "server records say whether the node is reached through a relay (`relayed`, its addresses lead with "
       "/p2p-circuit ones) and carry its owner's certificate (`owner`, protocol/owners.py); new record kind "
       "\"pairing\" (protocol/pairing.py). `Step.token_ids`: a lite client's token ids, embedded by the first server.",
    7: "server records announce load (`queued_steps`) and a `price` per 1,000 tokens (records.py); records reject "
       "unknown fields, so v6 peers could not read them.",
    8: "versions are negotiated (messages.py's docstring, versions.py): OpenSession.min_protocol_version, "
       "SessionOpened.protocol_version, ServerRecord.min_protocol_version; readers accept server records of newer "
       "versions with fields they do not know (records.py). Older peers could not negotiate: v8 is the minimum.",
    9: "RingSampling carries min_p, the penalties and the context tokens they look at (`history`), so that a ring's "
       "last server samples as the client would with them; sent only when they differ from their defaults, so a "
       "session without them is v8's bytes. A client rings with penalties only through a chain that speaks v9. "
       "Server records carry the node's counters, claims for dashboards: uptime_seconds, memory_bytes, cpu_percent, "
       "tokens_served, bytes_sent, bytes_received (records.py); v8 readers drop them (newer record).",
}


def range_text(versions: VersionRange) -> str:
    """"v8", or "v8 to v9" for a range of several versions."""
    low, high = versions
    return f"v{high}" if low == high else f"v{low} to v{high}"


def overlaps(ours: VersionRange, theirs: VersionRange) -> bool:
    return max(ours[0], theirs[0]) <= min(ours[1], theirs[1])


def incompatibility(ours: VersionRange, theirs: VersionRange, us: str = "this node", them: str = "the client") -> str:
    """Why `us` (speaking `ours`) and `them` (speaking `theirs`) cannot talk, and who must upgrade.
    Only meaningful when the ranges do not overlap."""
    speaks = f"{us} speaks protocol {range_text(ours)} and {them} {range_text(theirs)}"
    if theirs[0] > ours[1]:  # they are newer than anything we speak: we must upgrade
        return f"{speaks}: upgrade {us} ({UPGRADE_COMMAND})"
    return f"{speaks}: {them} must upgrade ({UPGRADE_COMMAND})"


def negotiate(ours: VersionRange, theirs: VersionRange, us: str = "this node", them: str = "the client") -> int:
    """The highest version both ranges hold; ProtocolError(VERSION_MISMATCH) with `incompatibility`'s
    sentence when they do not overlap, ValueError for a range that is empty (low > high)."""
    for side in (ours, theirs):
        if side[0] > side[1]:
            raise ValueError(f"protocol range v{side[0]} to v{side[1]} is empty")
    if not overlaps(ours, theirs):
        raise ProtocolError(ErrorCode.VERSION_MISMATCH, incompatibility(ours, theirs, us, them))
    return min(ours[1], theirs[1])


def unreadable_open_session(header: bytes, ours: VersionRange = OUR_RANGE) -> Optional[ProtocolError]:
    """For a JSON header this version failed to parse: if it is an OpenSession whose version range
    does not overlap ours (a peer of a newer, incompatible version, whose OpenSession may carry fields
    we do not know), the VERSION_MISMATCH refusal to send instead of "malformed"; else None.
    Reads only `type`, `protocol_version` and `min_protocol_version`, the fields that never change."""
    try:
        fields = json.loads(header)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if not isinstance(fields, dict) or fields.get("type") != "open_session":
        return None
    newest = fields.get("protocol_version")
    oldest = fields.get("min_protocol_version", newest)
    if not all(type(v) is int and 1 <= v <= MAX_VERSION_NUMBER for v in (newest, oldest)) or oldest > newest:
        return None
    if overlaps(ours, (oldest, newest)):
        return None  # within our range it must parse: a real defect
    return ProtocolError(ErrorCode.VERSION_MISMATCH, incompatibility(ours, (oldest, newest)))
