"""Invite tokens: one line that lets another machine join a swarm (`swarmllm join TOKEN`).

    swarmllm1.<base64url of a compact JSON body>.<first 8 hex of its sha256>

The body (`Invite`): the swarm's name, its model ids, the entry multiaddrs (each with /p2p/<id>;
relay circuits included), when it was issued and until when it is meant to be used. The check
digits catch a token cut short or mistyped in a chat window; they are not a signature: the
entry peers' ids inside the multiaddrs are what the joiner's libp2p connection authenticates,
so a token can point a joiner at the wrong swarm only if it was handed over by someone who
wanted that, which no signature by a key the joiner does not know would prevent.

`parse_invite(text, now)` raises `InviteError` with a sentence saying what is wrong (not a token,
cut short, garbled, from a newer swarmllm, expired) and what to do. No I/O; the caller passes `now`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmllm.protocol.envelope import validation_detail
from swarmllm.protocol.records import MODEL_ID_PATTERN

PREFIX = "swarmllm1"
# The public swarm's entry peers, the last place `swarmllm volunteer` looks (after an invite token,
# --initial-peers and the LAN; SWARMLLM_BOOTSTRAP_PEERS replaces the list). Empty until the project
# runs public bootstrap peers: a volunteer that finds no swarm starts one and prints its invite.
PUBLIC_BOOTSTRAP_PEERS: tuple[str, ...] = ()
DEFAULT_TTL = 30 * 86400.0        # s an invite is meant to be used for
MAX_TOKEN_CHARS = 4096
MAX_ENTRY_PEERS = 8
SWARM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ADDRESS = re.compile(r"^/(ip4|ip6|dns|dns4|dns6)/[^/\s]+/(tcp|udp)/\d{1,5}(/[A-Za-z0-9._-]+)*/p2p/[1-9A-HJ-NP-Za-km-z]+$")


class InviteError(ValueError):
    """An invite token cannot be used; the message says why and what to do."""


class Invite(BaseModel):
    """What a token carries."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    swarm: str = Field("default", pattern=SWARM_NAME_PATTERN)               # the swarm's name
    models: tuple[str, ...] = Field((), max_length=16)                      # model ids it serves (may be empty)
    peers: tuple[str, ...] = Field(min_length=1, max_length=MAX_ENTRY_PEERS)  # entry multiaddrs, /p2p/ID included
    issued_at: float = Field(ge=0)                                          # unix time
    expires_at: float = Field(ge=0)                                         # unix time after which it is stale

    def model_post_init(self, _context) -> None:
        for model in self.models:
            if not re.match(MODEL_ID_PATTERN, model):
                raise ValueError(f"model id {model!r} is not a valid model id")
        for peer in self.peers:
            if len(peer) > 256 or not _ADDRESS.match(peer):
                raise ValueError(f"{peer!r} is not a multiaddr with a /p2p/ peer id")


def make_invite(peers, models=(), swarm: str = "default", now: float = 0.0, ttl: float = DEFAULT_TTL) -> Invite:
    """An invite to the swarm at `peers` (non-loopback addresses first, at most MAX_ENTRY_PEERS)."""
    ordered = _loopback_last(p for p in peers if "/p2p/" in p)
    return Invite(swarm=swarm, models=tuple(dict.fromkeys(models)), peers=tuple(ordered[:MAX_ENTRY_PEERS]),
                  issued_at=now, expires_at=now + ttl)


def _loopback_last(peers) -> list[str]:
    return sorted(dict.fromkeys(peers), key=lambda p: "/ip4/127." in p or "/ip6/::1/" in p)


def _check(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def encode_invite(invite: Invite) -> str:
    """The token: compact JSON {s: swarm, m: models, p: {peer id: [addresses without /p2p/]}, i, e: whole seconds}."""
    grouped: dict[str, list[str]] = {}
    for peer in invite.peers:
        address, _, peer_id = peer.rpartition("/p2p/")
        grouped.setdefault(peer_id, []).append(address)
    body = {"s": invite.swarm, "m": list(invite.models), "p": grouped, "i": int(invite.issued_at),
            "e": int(invite.expires_at)}
    data = json.dumps(body, separators=(",", ":")).encode()
    return f"{PREFIX}.{base64.urlsafe_b64encode(data).decode().rstrip('=')}.{_check(data)}"


def _from_compact(body) -> Invite:
    if not isinstance(body, dict) or not isinstance(body.get("p"), dict):
        raise ValueError("no entry peers")
    peers = [f"{address}/p2p/{peer_id}" for peer_id, addresses in body["p"].items()
             for address in (addresses if isinstance(addresses, list) else [addresses])]
    return Invite(swarm=body.get("s", "default"), models=tuple(body.get("m") or ()), peers=tuple(_loopback_last(peers)),
                  issued_at=body.get("i", 0), expires_at=body.get("e", 0))


def parse_invite(text: str, now: float) -> Invite:
    token = "".join(str(text).split())  # a token wrapped by a chat window or a terminal
    if len(token) > MAX_TOKEN_CHARS:
        raise InviteError(f"this is not an invite token: {len(token)} characters, more than any token has")
    parts = token.split(".")
    if not parts[0].startswith("swarmllm"):
        raise InviteError("this is not a swarmllm invite token: tokens start with 'swarmllm1.'; copy the whole "
                          "`swarmllm join ...` line the inviting machine printed")
    if parts[0] != PREFIX:
        raise InviteError(f"this token is of format {parts[0]!r}, which this swarmllm does not read "
                          f"(it reads {PREFIX!r}); update swarmllm")
    if len(parts) != 3 or not parts[1] or not re.fullmatch(r"[0-9a-f]{8}", parts[2]):
        raise InviteError("this invite token is cut short or garbled: copy the whole line again")
    try:
        data = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    except (ValueError, TypeError):
        raise InviteError("this invite token is garbled (not base64): copy the whole line again") from None
    if _check(data) != parts[2]:
        raise InviteError("this invite token does not match its check digits (a character was changed or lost): "
                          "copy the whole line again")
    try:
        invite = _from_compact(json.loads(data))
    except (ValueError, TypeError, ValidationError) as e:
        detail = validation_detail(e) if isinstance(e, ValidationError) else str(e)
        raise InviteError(f"this invite token's contents are invalid ({detail}); ask for a new one") from None
    if invite.expires_at < now:
        days = (now - invite.expires_at) / 86400
        raise InviteError(f"this invite token expired {days:.0f} day(s) ago; ask whoever runs the swarm for a fresh "
                          "`swarmllm join` line (`swarmllm up` and `swarmllm bootstrap` print one)")
    return invite
