"""Owner certificates: "this node belongs to that person (or household)", signed by the owner.

An owner is an Ed25519 key kept by a person (swarmllm/owners.py stores it, one file shared by
all their machines). Each of their nodes carries an `OwnerCertificate`: the owner key, the
node's peer id, a validity window, and the owner key's signature over a domain-separated,
length-prefixed encoding of those fields. A server puts its certificate in its `ServerRecord`
(records.py, field `owner`), so readers can tell whose machine a server is:

    ServerRecord(peer_id="12D3KooWA...", ..., owner=OwnerCertificate(
        version=1, owner_key="9f3c...(64 hex)", node="12D3KooWA...",
        issued_at=1.7e9, expires_at=1.7e9 + 30 days, signature="(128 hex)"))

`verify_certificate(cert, peer_id, now)` is the whole check: the signature verifies against
the owner key, the certificate names `peer_id` (the record's signer, which is the peer id its
streams authenticate as), and `now` lies inside [issued_at - MAX_CLOCK_SKEW, expires_at]
with a lifetime of at most MAX_CERTIFICATE_LIFETIME. It raises `RecordRejected` saying which
rule failed. A certificate says nothing about what the node does; it only says who vouches
for it. Copying someone's certificate into another node's record gains nothing: it names the
peer it was issued for.

`owner_id(owner_key)` is the printable name of an owner ("owner-" + 26 base32 characters of
a SHA-256, 128 bits, so no one can make a key with another owner's id): what `swarmllm id`
prints, what trusted-owner lists and `swarmllm unpair` use, and what the trust radii compare
(client/radius.py).

Pure: no I/O, no clock (the caller passes `now`), no key storage. Signatures use the
`cryptography` library through envelope.py's cached verifier.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from swarmllm.protocol.envelope import ED25519_PUBLIC_KEY_PREFIX, RecordRejected, signature_valid

CERTIFICATE_VERSION = 1
MAX_CERTIFICATE_LIFETIME = 365 * 86400.0  # s: a lost machine's certificate stops counting within a year
DEFAULT_CERTIFICATE_LIFETIME = 30 * 86400.0  # s a node's certificate is issued for (renewed while it runs)
MAX_CLOCK_SKEW = 5.0  # s, as for records (records.py MAX_CLOCK_SKEW; not imported: records imports this module)
OWNER_KEY_PATTERN = r"^[0-9a-f]{64}$"  # raw Ed25519 public key, lowercase hex
OWNER_ID_PATTERN = r"^owner-[a-z2-7]{26}$"
_PEER_ID_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{1,128}$"  # base58 (records.PEER_ID_PATTERN)
_CERTIFICATE_DOMAIN = b"swarmllm-owner-certificate"  # a certificate signature is never another message's
_OWNER_ID_DOMAIN = b"swarmllm-owner-id"


class OwnerCertificate(BaseModel):
    """The owner key's statement that `node` is one of its machines, valid in [issued_at, expires_at]."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: Literal[1] = 1                               # 1 = Ed25519 over certificate_payload()
    owner_key: str = Field(pattern=OWNER_KEY_PATTERN)     # the owner's Ed25519 public key, raw 32 bytes as hex
    node: str = Field(pattern=_PEER_ID_PATTERN)           # the certified node's peer id (base58)
    issued_at: float = Field(ge=0)                        # unix time; not valid before (less the clock skew)
    expires_at: float = Field(ge=0)                       # unix time; not valid after
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")    # Ed25519 by owner_key over certificate_payload(), hex

    @property
    def owner_id(self) -> str:
        return owner_id(self.owner_key)


def owner_id(owner_key: str | bytes) -> str:
    """The printable id of an owner key (hex string or raw 32 bytes): "owner-" + 26 base32 characters."""
    raw = bytes.fromhex(owner_key) if isinstance(owner_key, str) else owner_key
    if len(raw) != 32:
        raise ValueError("an owner key is 32 bytes (Ed25519)")
    digest = hashlib.sha256(_OWNER_ID_DOMAIN + raw).digest()[:16]
    return "owner-" + base64.b32encode(digest).decode().rstrip("=").lower()


def is_owner_id(text: str) -> bool:
    return isinstance(text, str) and re.match(OWNER_ID_PATTERN, text) is not None


def owner_signature_valid(owner_key: str, payload: bytes, signature: str) -> bool:
    """Whether `signature` (hex) is owner_key's (hex) Ed25519 signature over `payload`; False on malformed input."""
    try:
        public_key, signature_bytes = ED25519_PUBLIC_KEY_PREFIX + bytes.fromhex(owner_key), bytes.fromhex(signature)
    except (TypeError, ValueError):
        return False
    return len(signature_bytes) == 64 and signature_valid(public_key, payload, signature_bytes)


def certificate_payload(owner_key: str, node: str, issued_at: float, expires_at: float) -> bytes:
    """The bytes a certificate's signature covers: length-prefixed fields after a domain tag."""
    parts = [_CERTIFICATE_DOMAIN, struct.pack(">H", CERTIFICATE_VERSION), bytes.fromhex(owner_key), node.encode(),
             struct.pack(">d", issued_at), struct.pack(">d", expires_at)]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def issue_certificate(owner_key: str, sign: Callable[[bytes], bytes], node: str, *, now: float,
                      lifetime: float = DEFAULT_CERTIFICATE_LIFETIME) -> OwnerCertificate:
    """A certificate for `node`, valid from `now` for `lifetime` s, signed by `sign` (owner_key's holder)."""
    if not 0 < lifetime <= MAX_CERTIFICATE_LIFETIME:
        raise ValueError(f"a certificate's lifetime is at most {MAX_CERTIFICATE_LIFETIME / 86400:.0f} days")
    issued_at, expires_at = float(now), float(now) + lifetime
    signature = sign(certificate_payload(owner_key, node, issued_at, expires_at))
    return OwnerCertificate(owner_key=owner_key, node=node, issued_at=issued_at, expires_at=expires_at,
                            signature=signature.hex())


def verify_certificate(certificate: OwnerCertificate, peer_id: str, *, now: float) -> OwnerCertificate:
    """`certificate` if it certifies `peer_id` at `now` under its owner's signature; RecordRejected saying why not."""
    if not isinstance(certificate, OwnerCertificate):
        raise RecordRejected("not an owner certificate")
    if certificate.node != peer_id:
        raise RecordRejected(f"the owner certificate is for peer {certificate.node}, not for its signer {peer_id}")
    lifetime = certificate.expires_at - certificate.issued_at
    if not 0 < lifetime <= MAX_CERTIFICATE_LIFETIME:
        raise RecordRejected(f"the owner certificate is valid for {lifetime / 86400:.1f} days; the limit is "
                             f"{MAX_CERTIFICATE_LIFETIME / 86400:.0f}")
    if now + MAX_CLOCK_SKEW < certificate.issued_at:
        raise RecordRejected(f"the owner certificate is not valid for another {certificate.issued_at - now:.0f} s")
    if now > certificate.expires_at:
        raise RecordRejected(f"the owner certificate expired {now - certificate.expires_at:.0f} s ago")
    payload = certificate_payload(certificate.owner_key, certificate.node, certificate.issued_at,
                                  certificate.expires_at)
    if not owner_signature_valid(certificate.owner_key, payload, certificate.signature):
        raise RecordRejected(f"the owner certificate's signature does not verify against {certificate.owner_id}")
    return certificate
