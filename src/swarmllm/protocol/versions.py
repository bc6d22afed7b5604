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
