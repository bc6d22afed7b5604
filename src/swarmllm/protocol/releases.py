"""Release records: "swarmllm X is out, here is its wheel", signed by a project release key.

A `ReleaseRecord` names a version, the protocol range it speaks, and the exact wheel (file
name, sha256, size, where to fetch it). It travels in the same signed envelope as DHT records
(envelope.py: Ed25519, subkey = the signer's id), kind "release", under the fixed key
`RELEASE_KEY`, and the same envelope is what a release file beside the wheel on a package index
holds (docs/updates.md). What makes a release believable is the signature of a *trusted
release key* alone: the keys in `PROJECT_RELEASE_KEYS` (embedded here) plus those a private
swarm or a test adds (`parse_release_keys` of SWARMLLM_RELEASE_KEYS / --release-key, read by
the caller). `verify_release` refuses, with a sentence saying why:
- a value that is not a signed envelope, or whose signature does not verify;
- a signer that is not a trusted release key (a hostile peer's self-signed "release");
- another kind, another key than RELEASE_KEY, an expired envelope or one valid for longer than
  MAX_RELEASE_TTL, a body with unknown fields or out-of-range values.
Passing says the release key holder published it; whether to install it (newer, compatible,
node idle) is the updater's policy (volunteer/updater.py), not this module's.

On a package index a release is the file `RELEASE_FILE` beside the wheel: the same envelope as
JSON with its byte fields in base64 (`release_file` / `read_release_file`), so the signature a
node checks is the one the DHT carries. DHT validators take a release record only when a trusted
key signed it (records.py `check_record`), and it may stay stored for up to MAX_RELEASE_TTL:
nodes that know a release re-store the envelope as it is, keeping it alive without the key.
`version_key` orders versions ("0.10.0" > "0.9.1" > "0.9.1rc1").
Pure: no I/O, no clock (callers pass `now`), no environment reading.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Callable, Collection, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmllm.protocol.envelope import (
    ED25519_PUBLIC_KEY_PREFIX, RecordRejected, SignedRecord, open_envelope, peer_id_from_public_key, seal,
    validation_detail,
)

RELEASE_KIND = "release"
RELEASE_KEY = "swarmllm.v1.releases"   # the one DHT key releases are stored under (subkey = the release key's id)
MAX_RELEASE_TTL = 400 * 86400.0        # s an envelope may stay valid: a release is re-published at least yearly
# The project's release public keys (raw Ed25519, hex). The private key never enters the repository.
PROJECT_RELEASE_KEYS: tuple[str, ...] = (
    "06c1b002a1a4e5fe8bc2cb63e1af38d9a9b0fd9c9e62943246663b3f5b54b088",  # made 2026-12-03 (the 2026-12-02 key was lost)
)
RELEASE_FILE = "release.json"    # the signed release beside the wheels of a release index (the fallback to the DHT)
MAX_RELEASE_FILE_BYTES = 16384   # a release file is one envelope; anything bigger is not read
_VERSION = r"^[0-9]+(\.[0-9]+){0,3}([a-z]+[0-9]*)?$"   # "0.1.1", "1.2.0rc1": what the updater compares
_WHEEL = r"^[A-Za-z0-9_.+-]{1,200}\.whl$"


class ReleaseRecord(BaseModel):
    """One published release of swarmllm (signed by a release key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: str = Field(pattern=_VERSION)                   # the package version, e.g. "0.1.1"
    protocol_version: int = Field(ge=1, le=2**16)            # the PROTOCOL_VERSION it speaks (its newest)
    min_protocol_version: int = Field(ge=1, le=2**16)        # the oldest protocol version it interoperates with
    wheel_name: str = Field(pattern=_WHEEL)                  # the wheel's file name
    wheel_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")     # hex sha256 of the wheel: checked before installing
    wheel_size: int = Field(gt=0, le=2**31)                  # bytes of the wheel
    wheel_url: str = Field(min_length=1, max_length=512)     # where the wheel is fetched (https://, http://, file://)
    published_at: float = Field(ge=0.0)                      # unix time of publication; the newest wins on a tie
    notes: str = Field(default="", max_length=500)           # a sentence for the people who run nodes


def public_key_bytes(hex_key: str) -> bytes:
    """A raw Ed25519 public key in hex as the protobuf-encoded key envelopes carry; ValueError if it is not one."""
    raw = bytes.fromhex(hex_key.strip())
    if len(raw) != 32:
        raise ValueError(f"a release key is 32 bytes of hex (64 digits), not {len(raw)} bytes")
    return ED25519_PUBLIC_KEY_PREFIX + raw


def parse_release_keys(text: str) -> list[str]:
    """Hex keys separated by commas or whitespace (SWARMLLM_RELEASE_KEYS); ValueError naming a bad one."""
    keys = [part for part in text.replace(",", " ").split() if part]
    for key in keys:
        try:
            public_key_bytes(key)
        except ValueError:
            raise ValueError(f"{key!r} is not a release public key (64 hex digits)") from None
    return keys


def trusted_signers(extra_keys: Iterable[str] = ()) -> frozenset[str]:
    """The signer ids (envelope.peer_id) of the project's release keys and of `extra_keys` (hex)."""
    return frozenset(peer_id_from_public_key(public_key_bytes(k)) for k in (*PROJECT_RELEASE_KEYS, *extra_keys))


def sign_release(release: ReleaseRecord, *, public_key: bytes, sign: Callable[[bytes], bytes],
                 expiration: float) -> SignedRecord:
    """The release in a signed envelope under RELEASE_KEY, valid until `expiration` (unix/DHT time)."""
    return seal(RELEASE_KIND, release.model_dump_json().encode(), key=RELEASE_KEY, expiration=expiration,
                public_key=public_key, sign=sign)


def verify_release(value: Any, trusted: Collection[str], *, now: float) -> ReleaseRecord:
    """The release in `value` (an envelope map or SignedRecord) if a trusted release key signed it and
    it is valid at `now`; RecordRejected saying why otherwise (module docstring)."""
    if isinstance(value, SignedRecord):
        value = value.to_value()
    try:
        signer = SignedRecord.model_validate(value).peer_id
    except (ValidationError, RecordRejected, TypeError):
        raise RecordRejected("not a signed release record") from None
    if signer not in trusted:
        raise RecordRejected(f"signed by {signer}, which is not a trusted release key")
    envelope = open_envelope(value, signer)  # the signature against the signer's own key
    if envelope.kind != RELEASE_KIND or envelope.key != RELEASE_KEY:
        raise RecordRejected(f"a {envelope.kind!r} record under {envelope.key!r}, not a release under {RELEASE_KEY!r}")
    if envelope.expiration < now or envelope.expiration > now + MAX_RELEASE_TTL:
        raise RecordRejected(f"expired, or valid for more than {MAX_RELEASE_TTL / 86400:.0f} days")
    try:
        release = ReleaseRecord.model_validate_json(envelope.body)
    except ValidationError as e:
        raise RecordRejected(f"invalid release record: {validation_detail(e)}") from None
    if release.min_protocol_version > release.protocol_version:
        raise RecordRejected(f"protocol range {release.min_protocol_version}-{release.protocol_version} is empty")
    return release


def version_key(version: str) -> tuple:
    """A sort key for release versions of `_VERSION`'s shape: numbers compare as numbers, and a
    pre-release ("1.2.0rc1") sorts before its release ("1.2.0"). ValueError for another shape."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+){0,3})([a-z]+)?([0-9]*)", version)
    if match is None:
        raise ValueError(f"{version!r} is not a release version (e.g. 0.1.1 or 1.2.0rc1)")
    numbers = tuple(int(n) for n in match.group(1).split("."))
    numbers += (0,) * (4 - len(numbers))
    pre = (0, match.group(2), int(match.group(3) or 0)) if match.group(2) else (1, "", 0)
    return numbers + pre


_BYTE_FIELDS = ("body", "public_key", "signature")


def release_file(envelope: SignedRecord) -> str:
    """The signed release as the JSON text of a release index's RELEASE_FILE."""
    value = envelope.to_value()
    return json.dumps({k: base64.b64encode(v).decode() if k in _BYTE_FIELDS else v for k, v in value.items()},
                      indent=1, sort_keys=True) + "\n"


def read_release_file(text: str | bytes) -> dict[str, Any]:
    """The envelope value of a RELEASE_FILE's text, for `verify_release`; RecordRejected if it is not one."""
    if len(text) > MAX_RELEASE_FILE_BYTES:
        raise RecordRejected(f"a release file is at most {MAX_RELEASE_FILE_BYTES} bytes")
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return {k: base64.b64decode(v, validate=True) if k in _BYTE_FIELDS else v for k, v in data.items()}
    except (ValueError, TypeError) as e:
        raise RecordRejected(f"not a release file ({e})") from None
