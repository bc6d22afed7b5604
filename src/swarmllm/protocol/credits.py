"""Signed credit statements and credit links: what a gateway owes a node, and who a key speaks for.

A gateway pays credits for steps it received from a server *and verified* (client/credits.py says
how many; client/credit_ledger.py keeps the books). Every credit period it signs one
`CreditStatement` per node and pushes it to the node over the `swarmllm.v1.credits` stream
(client/credit_issuer.py -> server/credits_inbox.py):

    gateway                                    node (peer id N)
      | frame = b"K" | envelope JSON  ------->   | open_credit_frame(frame, N, last_sequence)
      |                                <-------  | b"ok" or b"refused: <why>"

The statement travels in the same signed envelope as DHT records (envelope.py: Ed25519, the
signer's peer id derived from its key), kind "credits", key `credits_key(node)`. What makes a
statement believable is the signature alone, never the stream it came on: `open_credit_frame`
accepts it only if the envelope verifies, its signer is the statement's `gateway`, the envelope's
key and the statement's `node` name the receiving node, and its `sequence` is above the last one
accepted from that gateway (a replayed or reordered old statement is refused).

A `CreditLink` is the other direction: a node's key signs "API key with digest D speaks for me"
(`swarmllm credits link`), so a gateway can give that key the node's contribution (gateway/
free_tier.py) and nobody can claim another's node: the link is signed by the node itself.

No I/O and no clock: callers pass `now` where it matters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmllm.protocol.envelope import RecordRejected, SignedRecord, open_envelope, seal, validation_detail

CREDITS_HANDLER = "swarmllm.v1.credits"
CREDIT_KIND = "credits"
LINK_KIND = "credit_link"
LAYOUT_CREDITS = b"K"
MAX_FRAME_BYTES = 8192
STATEMENT_TTL = 365 * 86400.0  # s: a statement is a record of the past; it stays checkable for a year


def credits_key(node: str) -> str:
    return f"swarmllm.v1.credits.{node}"


def link_key(node: str) -> str:
    """The key a credit link's envelope names (links travel as files, not through the DHT)."""
    return f"swarmllm.v1.link.{node}"


def api_key_digest(api_key: str) -> str:
    """What a link names instead of the key itself (hex sha256): a link file gives no key away."""
    return hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()


class CreditStatement(BaseModel):
    """A gateway's signed word on what one node earned from it in one period."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    gateway: str = Field(min_length=1, max_length=128)  # the issuer's peer id: must be the envelope's signer
    node: str = Field(min_length=1, max_length=128)     # the server's peer id the credits are for
    period_start: float = Field(ge=0.0)                 # unix time: sessions settled after this ...
    period_end: float = Field(ge=0.0)                   # ... up to this (included); the next period starts here
    credits: int = Field(ge=0, le=2**53)                # positions x blocks of verified work settled in the period
    receipts: int = Field(ge=0, le=2**53)               # verified receipts those credits pay for
    forfeited_sessions: int = Field(default=0, ge=0, le=2**53)  # sessions that earned 0: a step was found wrong
    sequence: int = Field(ge=1, le=2**53)               # per (gateway, node), +1 each statement: replays are refused


class CreditLink(BaseModel):
    """A node's signed permission for an API key to count the node's contribution as its own."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    node: str = Field(min_length=1, max_length=128)                # the node's peer id: must be the signer
    key_digest: str = Field(pattern=r"^[0-9a-f]{64}$")             # api_key_digest of the linked key
    linked_at: float = Field(ge=0.0)                               # unix time; a node's newest link wins


def sign_credit_statement(statement: CreditStatement, *, public_key: bytes,
                          sign: Callable[[bytes], bytes], now: float) -> SignedRecord:
    return seal(CREDIT_KIND, statement.model_dump_json().encode(), key=credits_key(statement.node),
                expiration=now + STATEMENT_TTL, public_key=public_key, sign=sign)


def sign_credit_link(link: CreditLink, *, public_key: bytes, sign: Callable[[bytes], bytes]) -> SignedRecord:
    return seal(LINK_KIND, link.model_dump_json().encode(), key=link_key(link.node),
                expiration=link.linked_at + STATEMENT_TTL, public_key=public_key, sign=sign)


def envelope_to_json(envelope: SignedRecord) -> str:
    """An envelope as one line of JSON (bytes fields hex; the body is JSON text itself)."""
    return json.dumps({"version": envelope.version, "kind": envelope.kind, "key": envelope.key,
                       "expiration": envelope.expiration, "body": envelope.body.decode(),
                       "public_key": envelope.public_key.hex(), "signature": envelope.signature.hex()},
                      separators=(",", ":"))


def envelope_from_json(text: str | bytes) -> dict[str, Any]:
    """The envelope map of `envelope_to_json`'s output; RecordRejected for anything else."""
    try:
        raw = json.loads(text)
        return {**raw, "body": raw["body"].encode(), "public_key": bytes.fromhex(raw["public_key"]),
                "signature": bytes.fromhex(raw["signature"])}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise RecordRejected("not a signed statement in JSON") from None


def _signed(value: dict[str, Any], kind: str, body_type: type, what: str) -> tuple[SignedRecord, Any]:
    """The envelope and its body parsed as `body_type` if `value` is a valid signed record of `kind`."""
    try:
        signer = SignedRecord.model_validate(value).peer_id
    except (ValidationError, RecordRejected) as e:
        raise RecordRejected(f"not a signed record: {e}") from None
    envelope = open_envelope(value, signer)  # the signature against the signer's own key
    if envelope.kind != kind:
        raise RecordRejected(f"a {envelope.kind!r} record, not a {kind!r} one")
    try:
        return envelope, body_type.model_validate_json(envelope.body)
    except ValidationError as e:
        raise RecordRejected(f"invalid {what}: {validation_detail(e)}") from None


def verify_credit_statement(value: dict[str, Any], node: str, *, last_sequence: int = 0) -> CreditStatement:
    """The statement in `value` if it is signed by its gateway, for `node`, and newer than `last_sequence`
    (the highest accepted from that gateway); RecordRejected saying why otherwise."""
    envelope, statement = _signed(value, CREDIT_KIND, CreditStatement, "credit statement")
    if statement.gateway != envelope.peer_id:
        raise RecordRejected(f"a statement issued as {statement.gateway} but signed by {envelope.peer_id}")
    if statement.node != node or envelope.key != credits_key(node):
        raise RecordRejected(f"a statement for node {statement.node}, not for this node {node}")
    if statement.period_end < statement.period_start:
        raise RecordRejected("a statement whose period ends before it starts")
    if statement.sequence <= last_sequence:
        raise RecordRejected(f"statement {statement.sequence} of gateway {statement.gateway} is not newer than "
                             f"{last_sequence}, already accepted (a replay)")
    return statement


def verify_credit_link(value: dict[str, Any]) -> CreditLink:
    """The link in `value` if the node it names signed it; RecordRejected otherwise."""
    envelope, link = _signed(value, LINK_KIND, CreditLink, "credit link")
    if link.node != envelope.peer_id:
        raise RecordRejected(f"a link for node {link.node} signed by {envelope.peer_id}: only a node links itself")
    return link


def credit_frame(envelope: SignedRecord) -> bytes:
    return LAYOUT_CREDITS + envelope_to_json(envelope).encode()


def open_credit_frame(frame: bytes, node: str, last_sequence: Callable[[str], int]) -> tuple[CreditStatement, str]:
    """(the statement, its envelope as JSON) of a b"K" frame for `node`; `last_sequence(gateway)` is the
    highest sequence accepted from that gateway so far. RecordRejected saying why otherwise."""
    if len(frame) > MAX_FRAME_BYTES or frame[:1] != LAYOUT_CREDITS:
        raise RecordRejected(f"not a credit statement frame ({len(frame)} bytes)")
    text = bytes(frame[1:]).decode("utf-8", "replace")
    value = envelope_from_json(text)
    gateway: Optional[str] = None
    try:
        gateway = CreditStatement.model_validate_json(value["body"]).gateway
    except (ValidationError, KeyError, TypeError):
        pass  # verify_credit_statement says what is wrong
    statement = verify_credit_statement(value, node, last_sequence=last_sequence(gateway) if gateway else 0)
    return statement, text
