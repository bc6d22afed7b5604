"""This machine's owner: the owner key, the certificates it gives our nodes, the owners we trust.

The owner key (`OwnerKey`) is an Ed25519 key that stands for a person or a household. It is
kept in `$SWARMLLM_HOME/owner.key` (see state.py; made, mode 0600, on first use), or in the
file `--owner-key PATH` names. Every machine of one household should hold the same key: copy
the file (mode 0600) to each of them, and their nodes count as "local" for one another. The
file has the format of identity files (swarm/identity.py: libp2p's protobuf private key).

- `owner_key(path)` loads it, or makes it if the file does not exist. A file that others may
  read or change is refused with a sentence saying how to fix it; so is one that is not an
  Ed25519 key. Never made anew over a broken file: that would silently change the owner.
- `NodeCertificates(owner, peer_id)` issues the node's `OwnerCertificate` (protocol/owners.py)
  and renews it when less than a quarter of its lifetime is left; servers put `current(now)`
  in every record they announce. Certificates are dated CERTIFICATE_BACKDATE s back, so a
  DHT node whose clock runs a little behind still accepts a freshly issued one.
- `TrustStore` (`$SWARMLLM_HOME/trust.sqlite`, via state.open_database) holds the owners this
  owner trusts: one row per owner key with a label, when it was added, whether it was
  revoked, and the entry itself as JSON signed by *our* owner key. Reading checks each
  signature: a row edited by hand or by another program, or copied from another owner's
  store, does not verify and is left out (`problems()` says which). `add_trusted`,
  `revoke` (which re-signs the entry as revoked; `swarmllm unpair`) and `trusted_owners`
  are the API; `entries()` lists everything, revoked rows included.
What the signature does not do: anyone who can write the state folder can usually read the
owner key too (the same user), and could put back an older, unrevoked entry it saved
before a revocation. It guards against edits by other programs and stores from other
machines, not against this machine's own account.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmllm.protocol.owners import (
    DEFAULT_CERTIFICATE_LIFETIME, MAX_CERTIFICATE_LIFETIME, OWNER_KEY_PATTERN, OwnerCertificate, issue_certificate,
    owner_id, owner_signature_valid,
)
from swarmllm.state import open_database, state_dir

OWNER_KEY_FILE = "owner.key"
TRUST_FILE = "trust.sqlite"
ED25519_PRIVATE_KEY_PREFIX = b"\x08\x01\x12\x40"  # swarm/identity.py's format (not imported: it pulls in hivemind)
CERTIFICATE_BACKDATE = 600.0  # s
_TRUST_ENTRY_DOMAIN = b"swarmllm-trust-entry\x00"


class OwnerKeyError(ValueError):
    """The owner key file cannot be used; the message says what to do."""


def default_owner_key_path() -> Path:
    return state_dir() / OWNER_KEY_FILE


def default_trust_path() -> Path:
    return state_dir() / TRUST_FILE


class OwnerKey:
    """An owner's private key: its public key (hex), its owner id, and signing."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Optional[Path] = None):
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key: str = raw.hex()  # what certificates and trust entries carry
        self.owner_id: str = owner_id(raw)
        self.path = path

    @classmethod
    def generate(cls) -> "OwnerKey":
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def to_bytes(self) -> bytes:
        seed = self._private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption())
        return ED25519_PRIVATE_KEY_PREFIX + seed + bytes.fromhex(self.public_key)

    @classmethod
    def from_bytes(cls, data: bytes, path: Optional[Path] = None) -> "OwnerKey":
        where = str(path) if path else "the owner key"
        if len(data) != len(ED25519_PRIVATE_KEY_PREFIX) + 64 or not data.startswith(ED25519_PRIVATE_KEY_PREFIX):
            raise OwnerKeyError(f"{where} is not an Ed25519 owner key. If you have a copy of your owner key, put it "
                                "there; otherwise move the file away and a new owner key is made (your machines "
                                "then need the new file, and friends must pair with you again)")
        key = cls(Ed25519PrivateKey.from_private_bytes(data[4:36]), path)
        if key.public_key != data[36:].hex():
            raise OwnerKeyError(f"{where} is corrupt (its public key does not match its private key); put back a "
                                "copy of your owner key")
        return key

    def save(self, path: os.PathLike | str) -> None:
        """Write the key to a new file, mode 0600 (its folder 0700 if it has to be made); FileExistsError
        if there is one. The file appears whole (written aside, then linked): nodes started together
        (`swarmllm up`) may all make the default key at once, and none may read a half-written one."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.link(aside, path)  # atomic; fails if the file exists
        finally:
            aside.unlink(missing_ok=True)
        self.path = path


def load_owner_key(path: os.PathLike | str) -> OwnerKey:
    path = Path(path).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except FileNotFoundError:
        raise OwnerKeyError(f"there is no owner key at {path}; copy your owner key there, or leave out "
                            "--owner-key to use (or make) this machine's own") from None
    except OSError as e:
        raise OwnerKeyError(f"the owner key {path} cannot be read: {e.strerror}") from None
    if mode & 0o077:
        raise OwnerKeyError(f"the owner key {path} can be read or changed by other users (mode {mode:04o}); anyone "
                            f"who reads it can certify machines as yours. Run `chmod 600 {path}`")
    return OwnerKey.from_bytes(data, path)


def owner_key(path: Optional[os.PathLike | str] = None) -> OwnerKey:
    """The owner key at `path` (default: the state folder's owner.key, made there on first use).

    A `path` that was given must exist: a typo must not quietly make a second owner."""
    if path is not None:
        return load_owner_key(path)
    default = default_owner_key_path()
    if not default.exists():
        try:
            OwnerKey.generate().save(default)
        except FileExistsError:  # another process made it meanwhile
            pass
    return load_owner_key(default)


class NodeCertificates:
    """The node's certificate from its owner, renewed when less than a quarter of its lifetime is left."""

    def __init__(self, owner: OwnerKey, peer_id: str, lifetime: float = DEFAULT_CERTIFICATE_LIFETIME):
        if not CERTIFICATE_BACKDATE < lifetime <= MAX_CERTIFICATE_LIFETIME - CERTIFICATE_BACKDATE:
            raise ValueError(f"a certificate lifetime must be in ({CERTIFICATE_BACKDATE:.0f}, "
                             f"{MAX_CERTIFICATE_LIFETIME - CERTIFICATE_BACKDATE:.0f}] s")
        self.owner, self.peer_id, self.lifetime = owner, peer_id, lifetime
        self._current: Optional[OwnerCertificate] = None

    def current(self, now: float) -> OwnerCertificate:
        cert = self._current
        if cert is None or cert.expires_at - now < (cert.expires_at - cert.issued_at) / 4:
            cert = issue_certificate(self.owner.public_key, self.owner.sign, self.peer_id,
                                     now=now - CERTIFICATE_BACKDATE, lifetime=self.lifetime + CERTIFICATE_BACKDATE)
            self._current = cert
        return cert


# --- trusted owners --------------------------------------------------------------------
class TrustEntry(BaseModel):
    """One trusted owner as this owner signed it (the `entry` column of trust.sqlite)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: int = 1
    truster: str = Field(pattern=OWNER_KEY_PATTERN)   # our owner key: an entry of another store does not verify
    owner_key: str = Field(pattern=OWNER_KEY_PATTERN)  # the trusted owner's public key
    label: str = Field(default="", max_length=64)      # what the user calls them (from pairing, or given)
    added_at: float                                    # unix time
    revoked_at: Optional[float] = None                 # unix time of `swarmllm unpair`; None = trusted
    evidence: str = Field(default="", max_length=128)  # how it was added: "pairing:<transcript sha256>", ...


@dataclass(frozen=True)
class TrustedOwner:
    owner_id: str
    owner_key: str
    label: str
    added_at: float
    revoked_at: Optional[float]
    evidence: str

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trusted_owners (
    owner_key TEXT PRIMARY KEY,  -- hex Ed25519 public key (also inside entry)
    owner_id TEXT NOT NULL,
    label TEXT NOT NULL,
    added_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    entry TEXT NOT NULL,         -- TrustEntry JSON: the truth; the columns above are for people and queries
    signature TEXT NOT NULL      -- our owner key's Ed25519 signature over the entry, hex
);
"""


def _entry_payload(entry_json: str) -> bytes:
    return _TRUST_ENTRY_DOMAIN + entry_json.encode()


class TrustStore:
    """The owners `owner` trusts, in a SQLite file (module docstring)."""

    def __init__(self, owner: OwnerKey, path: Optional[os.PathLike | str] = None):
        self.owner = owner
        self.path = Path(path) if path is not None else default_trust_path()
        self._db: sqlite3.Connection = open_database(self.path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TrustStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, entry: TrustEntry) -> TrustedOwner:
        entry_json = entry.model_dump_json()
        signature = self.owner.sign(_entry_payload(entry_json)).hex()
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO trusted_owners VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (entry.owner_key, owner_id(entry.owner_key), entry.label, entry.added_at,
                              int(entry.revoked_at is not None), entry_json, signature))
        return _trusted(entry)

    def add_trusted(self, owner_key_hex: str, label: str = "", *, now: Optional[float] = None,
                    evidence: str = "") -> TrustedOwner:
        """Trust `owner_key_hex` (again, if it was revoked). Our own key is refused: it is local already."""
        if owner_key_hex == self.owner.public_key:
            raise ValueError("that is this machine's own owner key: its machines are local already")
        entry = TrustEntry(truster=self.owner.public_key, owner_key=owner_key_hex, label=label[:64],
                           added_at=time.time() if now is None else now, evidence=evidence[:128])
        return self._write(entry)

    def revoke(self, who: str, *, now: Optional[float] = None) -> TrustedOwner:
        """Stop trusting the owner whose id (or its unique start, or label) is `who`; returns it revoked."""
        matches = [e for e in self._verified() if e.revoked_at is None and _names(e, who)]
        if len(matches) != 1:
            listed = "no trusted owner" if not matches else f"{len(matches)} trusted owners"
            raise ValueError(f"{listed} match {who!r}; `swarmllm trusted` lists them with their ids")
        entry = matches[0]
        revoked = TrustEntry(truster=self.owner.public_key, owner_key=entry.owner_key, label=entry.label,
                             added_at=entry.added_at, revoked_at=time.time() if now is None else now,
                             evidence=entry.evidence)
        return self._write(revoked)

    def entries(self) -> list[TrustedOwner]:
        """Every entry that verifies, revoked ones included, oldest first."""
        return [_trusted(entry) for entry in self._verified()]

    def trusted_owners(self) -> list[TrustedOwner]:
        """The owners trusted now (verified, not revoked)."""
        return [owner for owner in self.entries() if not owner.revoked]

    def trusted_owner_ids(self) -> frozenset[str]:
        return frozenset(owner.owner_id for owner in self.trusted_owners())

    def problems(self) -> list[str]:
        """A sentence per row that does not verify (edited, or copied from another owner's store)."""
        return [problem for _, problem in self._rows() if problem]

    def _verified(self) -> list[TrustEntry]:
        return [entry for entry, problem in self._rows() if entry is not None and not problem]

    def _rows(self) -> list[tuple[Optional[TrustEntry], str]]:
        rows = self._db.execute("SELECT owner_key, revoked, entry, signature FROM trusted_owners ORDER BY added_at")
        out = []
        for row in rows.fetchall():
            out.append(self._check_row(row))
        return out

    def _check_row(self, row: sqlite3.Row) -> tuple[Optional[TrustEntry], str]:
        name = str(row["owner_key"])[:16]
        try:
            entry = TrustEntry.model_validate_json(row["entry"])
        except (ValidationError, TypeError, ValueError):
            return None, f"the entry for {name}... in {self.path} is not a trust entry; it is ignored"
        if not owner_signature_valid(self.owner.public_key, _entry_payload(str(row["entry"])), str(row["signature"])):
            return None, (f"the entry for {owner_id(entry.owner_key)} in {self.path} is not signed by this machine's "
                          "owner key (edited, or copied from another owner's store); it is ignored")
        if entry.truster != self.owner.public_key or entry.owner_key != row["owner_key"] \
                or bool(row["revoked"]) != (entry.revoked_at is not None):
            return None, f"the entry for {owner_id(entry.owner_key)} in {self.path} was edited; it is ignored"
        return entry, ""


def _trusted(entry: TrustEntry) -> TrustedOwner:
    return TrustedOwner(owner_id(entry.owner_key), entry.owner_key, entry.label, entry.added_at, entry.revoked_at,
                        entry.evidence)


def _names(owner: TrustEntry, who: str) -> bool:
    """`who` names `owner`: its id, a start of it of 10 characters or more, or its (non-empty) label."""
    oid = owner_id(owner.owner_key)
    return bool(who) and (who == oid or (len(who) >= 10 and oid.startswith(who)) or who == owner.label)
