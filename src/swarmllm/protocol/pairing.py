"""Pairing two owners with a short code: the code, what it derives, the DHT record, the messages.

`swarmllm pair` on machine W (the waiting side) shows a code; `swarmllm pair CODE` on machine J
(the joining side, a friend's) finds W through the DHT, and both prove over an authenticated
libp2p stream that they know the code, each binding the proof to both owner keys and both
peer ids. Each side then records the other's owner key as trusted (swarmllm/owners.py). The
steps are run by swarmllm/pairing.py; this module holds what both sides must agree on.

The code: CODE_LENGTH (10) characters of Crockford's base32 (50 bits), shown as "ABCDE-FGHJK";
`normalize_code` accepts any case, dashes and spaces, and reads O as 0 and I/L as 1.

What it derives (`derive_secrets`, one scrypt call, n=2^16, r=8: ~0.15 s and 64 MiB):
- `rendezvous`: 16 bytes as hex. W stores a `PairingRecord` under `pairing_key(rendezvous)`,
  subkey = W's peer id, refreshed while it waits (a record lives at most MAX_RECORD_TTL s).
  Anyone who sees the key can test guesses of the code offline, at one scrypt per guess: 2^50
  guesses in the 5 minutes a code lives is far beyond reach, and the code is single-use.
- `mac_key`: 32 bytes that never leave the two machines; the proofs are HMAC-SHA256 under it.
The record carries `tag` = HMAC(mac_key, W's peer id): a peer that copied the key to store
its own record under it cannot make the tag, so J skips it without contacting it.

The exchange, on stream PAIR_HANDLER opened by J to the peer id of the record (libp2p
authenticates both peer ids; each side takes the other's from the stream, never from a message):

    J -> W  PairHello(owner_key_J, label_J, nonce_J)
    W -> J  PairHello(owner_key_W, label_W, nonce_W)
    J -> W  PairProof(mac = HMAC(mac_key, "join" | T), signature = Sign_ownerJ("join" | T))
    W -> J  PairProof("wait" | T) if J's proof holds, else PairOutcome(ok=False, reason)
    J -> W  PairOutcome(ok) after checking W's proof (J has stored W's owner if ok)
    W -> J  PairOutcome(ok=True) once it has stored J's owner

T = `transcript(...)`: the rendezvous, both peer ids, both owner keys, both labels and both
nonces, length-prefixed after a domain tag. The MAC proves knowledge of the code; the owner
signature proves possession of the owner key being trusted. J proves first, so a peer that
does not know the code learns nothing but "refused". A PAKE would not help here: the
rendezvous key is already an offline test of the code, so the code's strength rests on scrypt.

Pure: no I/O, no clock (callers pass times); randomness only in `new_code` and `new_nonce`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from swarmllm.protocol.envelope import RecordRejected

PAIR_HANDLER = "swarmllm.v1.pair"
PAIRING_KEY_PREFIX = "swarmllm.v1.pairing."
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
CODE_LENGTH = 10                                     # 50 bits
DEFAULT_CODE_LIFETIME = 300.0                        # s a code is accepted for
MAX_CODE_LIFETIME = 3600.0
MAX_PAIRING_FRAME = 4096                             # bytes of one pairing message
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**16, 8, 1
_KDF_SALT = b"swarmllm-pairing-v1"
_TRANSCRIPT_DOMAIN = b"swarmllm-pairing-transcript"
_TAG_DOMAIN = b"swarmllm-pairing-rendezvous-tag"
_HEX32 = r"^[0-9a-f]{32}$"
_READ_AS = {"O": "0", "I": "1", "L": "1"}


class PairingError(ValueError):
    """A pairing step failed or an input is malformed; the message says what to do."""


# --- the code ---------------------------------------------------------------------------
def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def format_code(code: str) -> str:
    """"ABCDEFGHJK" -> "ABCDE-FGHJK" (what people read out)."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def normalize_code(text: str) -> str:
    """The code typed as `text` (any case, dashes and spaces ignored, O read as 0, I and L as 1)."""
    if not isinstance(text, str):
        raise PairingError("a pairing code is text")
    code = "".join(_READ_AS.get(c, c) for c in re.sub(r"[\s-]", "", text.upper()))
    if len(code) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in code):
        raise PairingError(f"{text!r} is not a pairing code: it is {CODE_LENGTH} letters and digits, like "
                           "7K2QF-9XMAB, as `swarmllm pair` printed it")
    return code


@dataclass(frozen=True)
class PairingSecrets:
    rendezvous: str   # hex, public: names the DHT key the waiting side is found under
    mac_key: bytes    # secret: the proofs' HMAC key


def derive_secrets(code: str) -> PairingSecrets:
    """The rendezvous and MAC key of a (normalized) code: one scrypt call (module docstring)."""
    out = Scrypt(salt=_KDF_SALT, length=64, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(normalize_code(code).encode())
    return PairingSecrets(rendezvous=out[:16].hex(), mac_key=out[32:])


def pairing_key(rendezvous: str) -> str:
    return PAIRING_KEY_PREFIX + rendezvous


def rendezvous_tag(pairing: PairingSecrets, peer_id: str) -> str:
    return hmac.new(pairing.mac_key, _TAG_DOMAIN + peer_id.encode(), hashlib.sha256).hexdigest()[:32]


def new_nonce() -> str:
    return secrets.token_hex(16)


# --- the DHT record ---------------------------------------------------------------------
class PairingRecord(BaseModel):
    """A machine waiting to pair, under `pairing_key(rendezvous)`, subkey = its peer id (records.py checks)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    peer_id: str = Field(max_length=128)             # the waiting peer: must be the record's signer
    tag: str = Field(pattern=_HEX32)                 # rendezvous_tag(secrets, peer_id): joiners skip impostors
    expires_at: float = Field(ge=0)                  # unix time the waiting side stops accepting the code
    announced_at: float = 0.0                        # DHT time of this announcement


def check_pairing_record(record: PairingRecord, key: str, subkey: str, *, now: float, skew: float) -> PairingRecord:
    """The rules of a pairing record beyond its schema (called by records.check_record)."""
    if record.peer_id != subkey:
        raise RecordRejected(f"a pairing record of peer {record.peer_id} signed by peer {subkey}")
    rendezvous = key[len(PAIRING_KEY_PREFIX):] if key.startswith(PAIRING_KEY_PREFIX) else ""
    if not re.match(_HEX32, rendezvous):
        raise RecordRejected(f"a pairing record stored under {key!r}, which is not a pairing key")
    if record.announced_at > now + skew:
        raise RecordRejected(f"announced {record.announced_at - now:.0f} s in the future")
    if record.expires_at > now + MAX_CODE_LIFETIME + skew:
        raise RecordRejected(f"a pairing code valid for more than {MAX_CODE_LIFETIME:.0f} s")
    return record


# --- the messages -----------------------------------------------------------------------
_MESSAGE = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class PairHello(BaseModel):
    """Each side's owner and nonce (J's first, then W's)."""

    model_config = _MESSAGE
    type: Literal["hello"] = "hello"
    owner_key: str = Field(pattern=r"^[0-9a-f]{64}$")  # the sender's owner public key (raw Ed25519, hex)
    label: str = Field(default="", max_length=64)       # a name for the other side's list ("Ana's house")
    nonce: str = Field(pattern=_HEX32)                  # fresh per attempt: no proof is valid twice


class PairProof(BaseModel):
    """Proof of the code (HMAC) and of the owner key (signature) over the transcript."""

    model_config = _MESSAGE
    type: Literal["proof"] = "proof"
    mac: str = Field(pattern=r"^[0-9a-f]{64}$")         # HMAC-SHA256(mac_key, role | transcript), hex
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")  # Ed25519 by the sender's owner key over role | transcript


class PairOutcome(BaseModel):
    """The end of an attempt: ok, or why not (shown to the other side's user)."""

    model_config = _MESSAGE
    type: Literal["outcome"] = "outcome"
    ok: bool
    reason: str = Field(default="", max_length=200)


PairMessage = Annotated[Union[PairHello, PairProof, PairOutcome], Field(discriminator="type")]
_MESSAGES: TypeAdapter = TypeAdapter(PairMessage)


def encode_message(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def decode_message(frame: bytes) -> Union[PairHello, PairProof, PairOutcome]:
    """A pairing message from a frame; PairingError for anything else (too long, not JSON, wrong fields)."""
    if not isinstance(frame, bytes) or len(frame) > MAX_PAIRING_FRAME:
        raise PairingError("the other side sent a malformed pairing message")
    try:
        return _MESSAGES.validate_json(frame)
    except ValidationError:
        raise PairingError("the other side sent a malformed pairing message") from None


# --- the transcript and the proofs ------------------------------------------------------
def transcript(rendezvous: str, waiting_peer: str, joining_peer: str, waiting: PairHello, joining: PairHello) -> bytes:
    """What both proofs cover: everything either side said, and who the streams say they are."""
    parts = [_TRANSCRIPT_DOMAIN, rendezvous.encode(), waiting_peer.encode(), joining_peer.encode(),
             bytes.fromhex(waiting.owner_key), bytes.fromhex(joining.owner_key), waiting.label.encode(),
             joining.label.encode(), waiting.nonce.encode(), joining.nonce.encode()]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def proof_payload(role: Literal["join", "wait"], transcript_bytes: bytes) -> bytes:
    return role.encode() + b"\x00" + transcript_bytes


def proof_mac(pairing: PairingSecrets, role: Literal["join", "wait"], transcript_bytes: bytes) -> str:
    return hmac.new(pairing.mac_key, proof_payload(role, transcript_bytes), hashlib.sha256).hexdigest()


def mac_matches(pairing: PairingSecrets, role: Literal["join", "wait"], transcript_bytes: bytes, mac: str) -> bool:
    return hmac.compare_digest(proof_mac(pairing, role, transcript_bytes), mac)


def transcript_digest(transcript_bytes: bytes) -> str:
    """A short fingerprint of an exchange, kept with the trust entry it produced."""
    return hashlib.sha256(transcript_bytes).hexdigest()
