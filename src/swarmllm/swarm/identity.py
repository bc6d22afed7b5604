"""A peer's identity: one Ed25519 key that p2pd runs with and that signs its DHT records.

What it promises:
- `Identity.generate()` / `Identity.load(path)` / `identity.save(path)`: the file is the key in
  libp2p's protobuf encoding (what p2pd's `-id` reads: PrivateKey{Ed25519, seed + public key}),
  written with mode 0600 in a directory created 0700. A file that group or others may read or
  change is refused with a sentence saying how to fix it, as is a key that is not Ed25519.
- `identity.peer_id` is libp2p's peer id of the key (protocol/envelope.py), which is what
  p2pd reports and what streams from this peer are authenticated as (SwarmNode checks).
- `claim_identity(path, name)`: the identity a long-lived process (a server, a bootstrap peer)
  runs with: `path` if given, else `default_identity_path(name)`; created on first use, kept
  across restarts (reputation and credits attach to the peer id). The process holds an
  exclusive lock on it while it runs, so two processes of one machine never share a peer id
  (libp2p would mix up their connections); that is also why hivemind's own "is this identity
  taken" check (which starts a second daemon and asks the swarm, where a restarted node's
  old records and connections still linger) is not used. An explicit path in use is an error;
  a default name in use moves on to `name-2`, `name-3`, ... so that several nodes can run
  from one account without flags.
- `claim_identity_folder(name)`: a folder of the state folder for a group of processes (the
  harness's `swarmllm up`: one identity per node name in it), locked the same way; `name` in
  use moves on to `name-2`, ... so that two `up`s at once do not fight over their nodes' keys.
- `default_identity_dir()`: $SWARMLLM_HOME/identities, else $XDG_STATE_HOME/swarmllm/identities,
  else ~/.local/state/swarmllm/identities.
Why Ed25519 and not hivemind's RSA-2048: signing takes ~0.04 ms instead of ~0.7 ms, a key is
made in 0.04 ms instead of ~70 ms, and a record carries 36 + 64 bytes of key and signature
instead of ~550; verifying is slower (0.12 ms against 0.04 ms), which the signature cache and
one signature per announced body make up for (benchmarks/records.py measures it).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmllm.protocol.envelope import ED25519_PUBLIC_KEY_PREFIX, peer_id_from_public_key
from swarmllm.state import state_dir

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the rest works
    fcntl = None

# libp2p's protobuf PrivateKey{key_type: Ed25519 (1), data: 64 bytes (seed, then public key)}.
ED25519_PRIVATE_KEY_PREFIX = b"\x08\x01\x12\x40"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_SLOTS = 64


class IdentityError(ValueError):
    """An identity file cannot be used; the message says what to do."""


class Identity:
    """A private key and its peer id. `lock` is held while a process runs with it (claim_identity)."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Optional[Path] = None):
        self._private_key = private_key
        raw = serialization.Encoding.Raw
        self._public_raw = private_key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        self.public_key = ED25519_PUBLIC_KEY_PREFIX + self._public_raw  # protobuf-encoded, as in records
        self.peer_id = peer_id_from_public_key(self.public_key)
        self.path = path
        self._lock_fd: Optional[int] = None

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def to_bytes(self) -> bytes:
        """The p2pd identity file's contents."""
        seed = self._private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption())
        return ED25519_PRIVATE_KEY_PREFIX + seed + self._public_raw

    @classmethod
    def from_bytes(cls, data: bytes, path: Optional[Path] = None) -> "Identity":
        where = f"{path}" if path else "the identity"
        if len(data) != len(ED25519_PRIVATE_KEY_PREFIX) + 64 or not data.startswith(ED25519_PRIVATE_KEY_PREFIX):
            raise IdentityError(f"{where} is not an Ed25519 libp2p key (an RSA key made by an older version, or "
                                "another file?); move it away and a new identity is created in its place")
        private_key = Ed25519PrivateKey.from_private_bytes(data[4:36])
        identity = cls(private_key, path)
        if identity._public_raw != data[36:]:
            raise IdentityError(f"{where} is corrupt (its public key does not match its private key); move it away "
                                "and a new identity is created in its place")
        return identity

    @classmethod
    def load(cls, path: os.PathLike | str) -> "Identity":
        path = Path(path)
        _check_private(path)
        return cls.from_bytes(path.read_bytes(), path)

    def save(self, path: os.PathLike | str) -> None:
        """Write the key to a new file, mode 0600 (its folder 0700 if it has to be made)."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_bytes())
        self.path = path

    # --- the lock ------------------------------------------------------------------------
    def try_lock(self) -> bool:
        """Lock the identity for this process; False if another process holds it."""
        if self.path is None or self._lock_fd is not None:
            return True
        self._lock_fd = _lock(str(self.path) + ".lock")
        return self._lock_fd is not None

    def release(self) -> None:
        if self._lock_fd is not None and self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None


def _lock(path: str) -> Optional[int]:
    """An open descriptor holding an exclusive flock on `path` (-1 without fcntl), or None if another
    process holds it."""
    if fcntl is None:
        return -1
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(f"the identity file {path} can be read or changed by other users (mode {mode:04o}); "
                            f"anyone who reads it can act as this peer. Run `chmod 600 {path}`")


def default_identity_dir() -> Path:
    return state_dir() / "identities"


def default_identity_path(name: str) -> Path:
    if not _NAME.match(name):
        raise IdentityError(f"a node name is letters, digits, '.', '_' and '-' (at most 64), not {name!r}")
    return default_identity_dir() / f"{name}.key"


def load_or_create(path: os.PathLike | str) -> Identity:
    """The identity in `path`, made and saved there first if the file does not exist."""
    path = Path(path).expanduser()
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate()
    try:
        identity.save(path)
    except FileExistsError:  # another process made it meanwhile
        return Identity.load(path)
    return identity


def claim_identity(path: Optional[os.PathLike | str] = None, name: str = "node") -> Identity:
    """The identity this process runs with, locked for its lifetime (module docstring)."""
    if path is not None:
        identity = load_or_create(path)
        if not identity.try_lock():
            raise IdentityError(f"the identity {path} is in use by another running process; stop it, or give this "
                                "one another --identity")
        return identity
    for slot in range(1, _MAX_SLOTS + 1):
        candidate = default_identity_path(name if slot == 1 else f"{name}-{slot}")
        identity = load_or_create(candidate)
        if identity.try_lock():
            return identity
    raise IdentityError(f"the identities {name} .. {name}-{_MAX_SLOTS} in {default_identity_dir()} are all in use; "
                        "pass --name or --identity")


class IdentityFolder:
    """A folder of identities held by this process (claim_identity_folder); `release()` frees it."""

    def __init__(self, path: Path, lock_fd: int):
        self.path, self._lock_fd = path, lock_fd

    def release(self) -> None:
        if self._lock_fd is not None and self._lock_fd >= 0:
            os.close(self._lock_fd)
        self._lock_fd = None


def claim_identity_folder(name: str) -> IdentityFolder:
    """The first of default_identity_dir()/name, name-2, ... that no running process holds, locked."""
    for slot in range(1, _MAX_SLOTS + 1):
        path = default_identity_path(name if slot == 1 else f"{name}-{slot}").with_suffix("")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = _lock(str(path / ".lock"))
        if fd is not None:
            return IdentityFolder(path, fd)
    raise IdentityError(f"the identity folders {name} .. {name}-{_MAX_SLOTS} in {default_identity_dir()} are all in "
                        "use")
