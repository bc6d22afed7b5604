"""Signed step receipts: their bytes on the wire, what the signature covers, and the check.

A server sends a `StepReceipt` (messages.py) for every step it computes. On the wire a receipt
is one frame, `b"V" | payload | signature`, where `payload` is the receipt's fields in a fixed
binary layout and `signature` the server's Ed25519 signature over `DOMAIN | payload`:

    payload  u8 version (1) | str session_id | uint step_id | uint start_position | uint positions
             | uint start | uint end | str model_id | 32 input_hash | 32 output_hash
             | str compute_class | str peer_id | f64 time (little endian)
    str      u8 length, then that many bytes of UTF-8
    uint     unsigned LEB128 (compact_header.py), at most 9 bytes

The payload is both the wire form and the signed bytes: nothing is re-serialised before it is
verified, and decoding re-encodes the fields to check that the bytes were canonical (the same
receipt always has the same bytes, so a stored receipt can be checked again by anyone).

Whose key: a libp2p Ed25519 peer id is the identity multihash of the public key
(envelope.py), so the key is read from the peer id itself (`public_key_from_peer_id`): a receipt
needs no certificate, and the client checks it against the peer id libp2p authenticated for
the stream it came on. `verify_receipt` raises `ReceiptRejected` saying what is wrong.

Cost (benchmarks/results/receipts.md, AMD EPYC): signing a one-token step's receipt ~55 us
(Ed25519 ~40 of it), the client's decode + checks + verification ~150 us (Ed25519 ~120), sha256
~1 us per KiB of tensor. No I/O, no clock: the caller passes the time.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Callable

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from swarmllm.protocol.compact_header import Reader, uleb128
from swarmllm.protocol.envelope import ED25519_PUBLIC_KEY_LENGTH, ED25519_PUBLIC_KEY_PREFIX, validation_detail
from swarmllm.protocol.errors import ErrorCode, ProtocolError
from swarmllm.protocol.messages import StepReceipt

LAYOUT_RECEIPT = b"V"
RECEIPT_VERSION = 1
DOMAIN = b"swarmllm-step-receipt"  # so that a receipt signature is never valid as a record's, or vice versa
SIGNATURE_BYTES = 64
_F64 = struct.Struct("<d")


class ReceiptRejected(ValueError):
    """A receipt does not verify; the message says why."""


def digest(data: bytes | memoryview) -> bytes:
    """sha256 of a tensor's wire bytes: what receipts carry as input_hash / output_hash."""
    return hashlib.sha256(data).digest()


@functools.lru_cache(maxsize=4096)  # base58 is pure Python; the same servers sign every step
def public_key_from_peer_id(peer_id: str) -> bytes:
    """The protobuf-encoded Ed25519 public key inside a libp2p peer id (identity multihash), or
    ReceiptRejected for a peer id that does not hold one (an RSA peer's id is a sha256 multihash)."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        raise ReceiptRejected(f"{peer_id!r} is not a base58 peer id") from None
    key = raw[2:]
    if raw[:2] != bytes([0x00, ED25519_PUBLIC_KEY_LENGTH]) or len(key) != ED25519_PUBLIC_KEY_LENGTH \
            or not key.startswith(ED25519_PUBLIC_KEY_PREFIX):
        raise ReceiptRejected(f"peer id {peer_id} does not hold an Ed25519 key")
    return key


def _text(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:40]!r}... is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def payload_of(receipt: StepReceipt) -> bytes:
    """The receipt's signed bytes (the module docstring's layout); the signature is not part of them."""
    return _payload(receipt.__dict__)


def _payload(f: dict) -> bytes:
    return b"".join((
        bytes((RECEIPT_VERSION,)), _text(f["session_id"]), uleb128(f["step_id"]), uleb128(f["start_position"]),
        uleb128(f["positions"]), uleb128(f["start"]), uleb128(f["end"]), _text(f["model_id"]), f["input_hash"],
        f["output_hash"], _text(f["compute_class"]), _text(f["peer_id"]), _F64.pack(f["time"])))


def sign_receipt(fields: dict, sign: Callable[[bytes], bytes]) -> tuple[StepReceipt, bytes]:
    """(the receipt, its frame) for `fields` (every StepReceipt field but type and signature),
    signed by `sign` (the server's identity: swarm/identity.py)."""
    receipt = StepReceipt(**fields, signature=bytes(SIGNATURE_BYTES))  # validated before anything is signed
    payload = _payload(fields)
    signature = sign(DOMAIN + payload)
    return receipt.model_copy(update={"signature": signature}), LAYOUT_RECEIPT + payload + signature


def encode_receipt(receipt: StepReceipt) -> bytes:
    """A receipt's frame (what `sign_receipt` returned for it)."""
    return LAYOUT_RECEIPT + payload_of(receipt) + receipt.signature


def decode_receipt(frame: bytes | memoryview) -> StepReceipt:
    """The receipt in a b"V" frame, its fields validated; ProtocolError(MALFORMED) on any defect.
    The signature is not checked here (`verify_receipt`)."""
    view = memoryview(frame)
    if len(view) < 1 + SIGNATURE_BYTES or bytes(view[:1]) != LAYOUT_RECEIPT:
        raise ProtocolError(ErrorCode.MALFORMED, f"a receipt frame of {len(view)} bytes is too short")
    body = view[1:len(view) - SIGNATURE_BYTES]
    reader = Reader(body, 0, "StepReceipt")
    if reader.byte() != RECEIPT_VERSION:
        raise ProtocolError(ErrorCode.MALFORMED, "a receipt of an unknown version")
    fields = {"session_id": _read_text(reader), "step_id": reader.integer(), "start_position": reader.integer(),
              "positions": reader.integer(), "start": reader.integer(), "end": reader.integer(),
              "model_id": _read_text(reader), "input_hash": bytes(reader.take(32)),
              "output_hash": bytes(reader.take(32)), "compute_class": _read_text(reader),
              "peer_id": _read_text(reader), "time": _F64.unpack(reader.take(_F64.size))[0]}
    if reader.offset != len(body):
        raise ProtocolError(ErrorCode.MALFORMED, f"{len(body) - reader.offset} bytes after a receipt's fields")
    try:
        receipt = StepReceipt(**fields, signature=bytes(view[len(view) - SIGNATURE_BYTES:]))
    except ValidationError as e:
        raise ProtocolError(ErrorCode.MALFORMED, f"invalid receipt: {validation_detail(e)}") from None
    if payload_of(receipt) != bytes(body):  # e.g. an integer in more bytes than it needs
        raise ProtocolError(ErrorCode.MALFORMED, "a receipt's bytes are not in canonical form")
    return receipt


def _read_text(reader: Reader) -> str:
    raw = reader.take(reader.byte())
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.MALFORMED, "a receipt's text field is not UTF-8") from None


@functools.lru_cache(maxsize=1024)
def _verifier(peer_id: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key_from_peer_id(peer_id)[len(ED25519_PUBLIC_KEY_PREFIX):])


def verify_receipt(receipt: StepReceipt, peer_id: str | None = None) -> None:
    """Raise ReceiptRejected unless `receipt` is signed by the key of its own peer id and, if given,
    that peer id is `peer_id` (the authenticated peer of the stream it came on)."""
    if peer_id is not None and receipt.peer_id != peer_id:
        raise ReceiptRejected(f"a receipt signed as peer {receipt.peer_id} came from peer {peer_id}")
    verifier = _verifier(receipt.peer_id)  # ReceiptRejected for a peer id without an Ed25519 key
    try:
        verifier.verify(receipt.signature, DOMAIN + payload_of(receipt))
    except (InvalidSignature, ValueError):
        raise ReceiptRejected(f"the receipt of step {receipt.step_id} does not verify against peer "
                              f"{receipt.peer_id}'s key") from None
