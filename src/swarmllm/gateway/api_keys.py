"""Optional API keys: who may use the gateway, and each key's own limits.

`swarmllm gateway --api-keys FILE` reads a JSON or YAML file:

    keys:
      - name: alice                 # shown in error messages and logs, never the key itself
        key: "sk-0123456789abcdef"  # at least 16 characters; sent as `Authorization: Bearer KEY`
        requests_per_minute: 120    # each limit is optional: the gateway's own when left out
        tokens_per_minute: 200000
        concurrency: 4

The file is refused if users other than its owner may read or write it (chmod 600), or if
it names a key or a name twice. Lookups compare the SHA-256 of the presented key with every
stored one in constant time (`hmac.compare_digest`, no early exit), so the time taken does
not tell a caller how much of a key was right. With a key file, requests without a valid
key get 401 unless the gateway is started with `--allow-anonymous` (then anonymous requests
are limited per address, and a wrong key is still a 401, never a silent fall-back).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarmllm.gateway.limits import Limits


class ApiKeyFileError(ValueError):
    """The API key file cannot be used; the message says why and what to do."""


class ApiKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)  # who holds the key (for messages and logs)
    key: str = Field(min_length=16, max_length=512)  # the secret the client sends
    requests_per_minute: Optional[int] = Field(default=None, ge=1)  # None: the gateway's default
    tokens_per_minute: Optional[int] = Field(default=None, ge=1)    # None: the gateway's default
    concurrency: Optional[int] = Field(default=None, ge=1)          # None: the gateway's default


class ApiKeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[ApiKeyEntry] = Field(min_length=1)  # every key the gateway accepts


@dataclass(frozen=True)
class ApiKeyHolder:
    """An authenticated caller: the name of its key and the limits it gets."""

    name: str
    limits: Limits

    @property
    def client_key(self) -> str:
        return f"key:{self.name}"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    def __init__(self, entries: list[ApiKeyEntry]):
        if len({e.name for e in entries}) != len(entries) or len({e.key for e in entries}) != len(entries):
            raise ApiKeyFileError("the API key file names a key or a holder twice; give every key its own name")
        self._entries = [(_digest(e.key), e) for e in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str | Path) -> "ApiKeys":
        path = Path(path)
        try:
            info = path.stat()
        except OSError as e:
            raise ApiKeyFileError(f"cannot read the API key file {path}: {e.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise ApiKeyFileError(f"the API key file {path} is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise ApiKeyFileError(f"the API key file {path} can be read or changed by other users; "
                                  f"run `chmod 600 {path}`")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            return cls(ApiKeyFile.model_validate(data).keys)
        except (json.JSONDecodeError, yaml.YAMLError):
            raise ApiKeyFileError(f"the API key file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}"
                                  ) from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the file"
            raise ApiKeyFileError(f"the API key file {path} is not in the expected shape ({where}: {first['msg']}); "
                                  "see `swarmllm gateway --help`") from None

    def lookup(self, presented: str, defaults: Limits) -> Optional[ApiKeyHolder]:
        """The holder of `presented`, or None; every stored key is compared, in constant time."""
        digest, found = _digest(presented), None
        for stored, entry in self._entries:
            if hmac.compare_digest(stored, digest):
                found = entry
        if found is None:
            return None
        return ApiKeyHolder(found.name, Limits(
            requests_per_minute=found.requests_per_minute or defaults.requests_per_minute,
            tokens_per_minute=found.tokens_per_minute or defaults.tokens_per_minute,
            concurrency=found.concurrency or defaults.concurrency))


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The KEY of an `Authorization: Bearer KEY` header; None when there is no such header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
