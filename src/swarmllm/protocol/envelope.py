"""The signed envelope every swarmllm DHT value travels in: who wrote it, and the proof.

A DHT value is a `SignedRecord`: a typed body (a `ServerRecord`, a `ModelRecord`, or a kind
a later issue adds) as JSON bytes, the writer's libp2p public key, and an Ed25519 signature
over (envelope version, kind, subkey, expiration, body). A record may only be stored under
the subkey that is the peer id of its public key, derived as libp2p derives it (the identity
multihash of the protobuf-encoded key, base58): the same id the writer's libp2p streams are
authenticated as, so a record speaks only for the peer that holds the key.

    value = {"version": 1, "kind": "server", "key": "swarmllm.v1.M.block3", "expiration": 1.7e9,
             "body": b'{"peer_id": ...}', "public_key": b"\\x08\\x01\\x12\\x20" + 32 bytes,
             "signature": 64 bytes}

What is signed and what is not:
- Signed: the kind, the subkey (the writer's peer id), the DHT expiration time (so nobody
  can re-store an old record with a later expiration and keep a dead peer alive), the body.
- Not signed: `key`, the DHT key this copy is stored under. A DHT validator sees only the
  key's hash, so the envelope names the key; which keys a body may be stored under is
  decided per kind from the signed body (records.py: a server record only under the block
  keys its span covers), so copying an envelope to another key gains nothing. Signing the
  body once rather than once per key lets a node announce all its block keys with one
  signature and a reader verify a server's records once per lookup.

What it promises: `seal` builds an envelope with an injected signer (the private key stays
in swarm/identity.py); `open_envelope` returns an envelope only if its shape, size, public
key, subkey and signature check out, and raises `RecordRejected` saying why otherwise. It
does not judge bodies (records.py does, per kind) and reads no clock. Verification uses the
maintained `cryptography` library; successful verifications are remembered (a small LRU),
since the same envelope arrives from several replicas and is checked again by readers.
Envelope version 1 knows Ed25519 keys only.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Callable, Literal, Mapping

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENVELOPE_VERSION = 1
MAX_RECORD_BYTES = 4096        # a whole envelope, encoded; bigger values are refused before they are parsed
MAX_BODY_BYTES = 3072          # the body's JSON
MAX_KEY_LENGTH = 256           # a DHT key string

# libp2p's protobuf PublicKey{key_type: Ed25519 (1), data: 32 bytes}: field 1 varint 1, field 2 length 32.
ED25519_PUBLIC_KEY_PREFIX = b"\x08\x01\x12\x20"
ED25519_PUBLIC_KEY_LENGTH = len(ED25519_PUBLIC_KEY_PREFIX) + 32
ED25519_SIGNATURE_LENGTH = 64
_DOMAIN = b"swarmllm-dht-record"  # so that a record signature can never be taken for another message's


class RecordRejected(ValueError):
    """A DHT value failed a check; the message says which."""


class SignedRecord(BaseModel):
    """What is stored in the DHT: a body, who wrote it, and the writer's signature over it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    version: Literal[1]                      # envelope format; 1 = Ed25519 over signing_payload()
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")  # which body schema (records.py RecordKind)
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)  # DHT key of this copy (not signed, see above)
    expiration: float                        # DHT expiration time it is stored with (signed)
    body: bytes = Field(max_length=MAX_BODY_BYTES)  # the body model as JSON
    public_key: bytes = Field(min_length=ED25519_PUBLIC_KEY_LENGTH, max_length=ED25519_PUBLIC_KEY_LENGTH)  # protobuf
    signature: bytes = Field(min_length=ED25519_SIGNATURE_LENGTH, max_length=ED25519_SIGNATURE_LENGTH)

    @property
    def peer_id(self) -> str:
        """The writer: the peer id of the public key."""
        return peer_id_from_public_key(self.public_key)

    def to_value(self) -> dict[str, Any]:
        """The DHT value (a plain map; hivemind serialises it with msgpack)."""
        return self.model_dump()


@functools.lru_cache(maxsize=4096)  # base58 is pure Python (~0.1 ms); the same writers come back all the time
def peer_id_from_public_key(public_key: bytes) -> str:
    """libp2p's peer id of a protobuf-encoded public key: the identity multihash of the key
    bytes when they are at most 42 bytes long (Ed25519 keys are 36), base58btc-encoded.
    See https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md#peer-ids."""
    if len(public_key) > 42:
        raise RecordRejected("only keys of at most 42 bytes (Ed25519) are supported")
    return base58.b58encode(bytes([0x00, len(public_key)]) + public_key).decode()


def signing_payload(kind: str, subkey: str, expiration: float, body: bytes) -> bytes:
    """The bytes a record's signature covers: length-prefixed fields, so no two records share them."""
    parts = [_DOMAIN, struct.pack(">H", ENVELOPE_VERSION), kind.encode(), subkey.encode(),
             struct.pack(">d", expiration), body]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def seal(kind: str, body: bytes, *, key: str, expiration: float, public_key: bytes,
         sign: Callable[[bytes], bytes]) -> SignedRecord:
    """An envelope for `body`, signed by `sign` (the holder of `public_key`'s private key)."""
    subkey = peer_id_from_public_key(public_key)
    return SignedRecord(version=ENVELOPE_VERSION, kind=kind, key=key, expiration=float(expiration), body=body,
                        public_key=public_key, signature=sign(signing_payload(kind, subkey, expiration, body)))


def with_key(envelope: SignedRecord, key: str) -> SignedRecord:
    """The same signed record, addressed to another DHT key (the signature does not cover it)."""
    return envelope.model_copy(update={"key": key})


@functools.lru_cache(maxsize=2048)
def _signature_valid(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key[len(ED25519_PUBLIC_KEY_PREFIX):]).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def signature_valid(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether `signature` is the Ed25519 signature of `public_key` (protobuf-encoded, as in
    envelopes) over `payload`; remembered like envelopes' (owner certificates use it too)."""
    if not public_key.startswith(ED25519_PUBLIC_KEY_PREFIX) or len(public_key) != ED25519_PUBLIC_KEY_LENGTH:
        return False
    return _signature_valid(public_key, payload, signature)


def open_envelope(value: Any, subkey: Any) -> SignedRecord:
    """`value` as a SignedRecord stored under `subkey`, or RecordRejected: not an envelope, not
    Ed25519, a subkey that is not the key's peer id, or a signature that does not verify."""
    if not isinstance(value, Mapping):
        raise RecordRejected(f"the value is a {type(value).__name__}, not a signed record")
    try:
        envelope = SignedRecord.model_validate(value)
    except ValidationError as e:
        raise RecordRejected(f"not a valid signed record: {validation_detail(e)}") from None
    if not envelope.public_key.startswith(ED25519_PUBLIC_KEY_PREFIX):
        raise RecordRejected("the public key is not an Ed25519 key")
    if not isinstance(subkey, str) or subkey != envelope.peer_id:
        raise RecordRejected(f"stored under subkey {subkey!r}, but signed by peer {envelope.peer_id}")
    payload = signing_payload(envelope.kind, subkey, envelope.expiration, envelope.body)
    if not _signature_valid(envelope.public_key, payload, envelope.signature):
        raise RecordRejected(f"the signature does not verify against peer {subkey}'s key")
    return envelope


def validation_detail(error: ValidationError) -> str:
    """The first problem pydantic found, as "field: message"."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg', 'invalid')}"
