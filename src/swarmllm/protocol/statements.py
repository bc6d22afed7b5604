"""Signed reputation statements: what a gateway says about a third party, and the check.

A client believes its own measurements (client/reputation.py) and, about other peers, only
statements signed by a gateway its user chose to trust (their peer ids in the trusted-gateways
file, client/reputation.py). A statement travels in the same signed envelope as DHT records
(envelope.py: Ed25519, the signer's peer id derived from its key), with kind "reputation" and
the key `statement_key(subject)`, so no new signature scheme is involved:

    value = seal("reputation", statement JSON, key="swarmllm.v1.reputation.<subject>", expiration, ...)

`verify_statement` returns the statement only if the envelope verifies, its signer is in the
trusted set and is the statement's `issuer`, it has not expired, and the body passes its schema;
otherwise it raises `RecordRejected` saying why. How a statement is weighed is the reader's
policy (client/reputation.py), not this module's. No I/O, no clock: the caller passes `now`.
How statements are distributed (a DHT key, a gateway endpoint) is left to a later issue.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmllm.protocol.envelope import RecordRejected, SignedRecord, open_envelope, seal, validation_detail

STATEMENT_KIND = "reputation"
MAX_STATEMENT_TTL = 30 * 86400.0  # s a statement may be valid for


def statement_key(subject: str) -> str:
    return f"swarmllm.v1.reputation.{subject}"


class ReputationStatement(BaseModel):
    """A gateway's claim about one peer's record, signed by the gateway (the issuer)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    subject: str = Field(min_length=1, max_length=128)  # peer id the statement is about
    issuer: str = Field(min_length=1, max_length=128)   # the gateway's peer id: must be the envelope's signer
    steps_verified: int = Field(default=0, ge=0, le=2**53)  # steps of the subject the issuer verified
    mismatches: int = Field(default=0, ge=0, le=2**53)      # of those, how many were wrong
    timeouts: int = Field(default=0, ge=0, le=2**53)        # steps the subject did not answer in time
    banned_until: float = Field(default=0.0, ge=0.0)        # unix time the issuer bans the subject until (0: not)
    reason: str = Field(default="", max_length=200)          # a sentence for people reading an audit
    issued_at: float = Field(ge=0.0)                         # unix time of the statement


def sign_statement(statement: ReputationStatement, *, public_key: bytes, sign: Callable[[bytes], bytes],
                   expiration: float) -> SignedRecord:
    """The statement in a signed envelope, valid until `expiration` (unix time)."""
    return seal(STATEMENT_KIND, statement.model_dump_json().encode(), key=statement_key(statement.subject),
                expiration=expiration, public_key=public_key, sign=sign)


def verify_statement(value: Any, trusted: Collection[str], *, now: float) -> ReputationStatement:
    """The statement in `value` (an envelope as a dict or a SignedRecord) if a trusted gateway
    signed it and it is still valid; RecordRejected saying why otherwise."""
    if isinstance(value, SignedRecord):
        value = value.to_value()
    signer = None
    if isinstance(value, dict) and isinstance(value.get("public_key"), bytes):
        try:
            signer = SignedRecord.model_validate(value).peer_id
        except (ValidationError, RecordRejected):
            signer = None
    if signer is None:
        raise RecordRejected("not a signed statement")
    if signer not in trusted:
        raise RecordRejected(f"signed by {signer}, which is not a gateway this client trusts")
    envelope = open_envelope(value, signer)  # checks the signature against the signer's own key
    if envelope.kind != STATEMENT_KIND:
        raise RecordRejected(f"a {envelope.kind!r} record, not a reputation statement")
    if envelope.expiration < now or envelope.expiration > now + MAX_STATEMENT_TTL:
        raise RecordRejected(f"expired, or valid for more than {MAX_STATEMENT_TTL / 86400:.0f} days")
    try:
        statement = ReputationStatement.model_validate_json(envelope.body)
    except ValidationError as e:
        raise RecordRejected(f"invalid statement: {validation_detail(e)}") from None
    if statement.issuer != signer:
        raise RecordRejected(f"a statement issued by {statement.issuer} but signed by {signer}")
    if envelope.key != statement_key(statement.subject):
        raise RecordRejected(f"addressed to {envelope.key!r}, not to its subject {statement.subject}")
    return statement
