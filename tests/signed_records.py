"""Helpers for tests of signed DHT records: honest envelopes, and forged ones that skip the schemas.

(In tests/, beside conftest.py, so that unit and integration tests both import it.) Times
default to a fixed `NOW` for unit tests; integration tests pass real DHT times.
"""

from __future__ import annotations

import json
from typing import Optional, Union

from pydantic import BaseModel

from swarmllm.protocol import ServerRecord, block_key, kind_of
from swarmllm.protocol.envelope import ENVELOPE_VERSION, peer_id_from_public_key, seal, signing_payload
from swarmllm.swarm.identity import Identity

NOW = 1_000_000.0  # the checker's DHT time in these tests
MODEL = "m"


def server_record(identity: Identity, start: int = 0, end: int = 10, n_blocks: int = 30, model_id: str = MODEL,
                  now: float = NOW, **fields) -> ServerRecord:
    values = dict(peer_id=identity.peer_id, model_id=model_id, start=start, end=end, n_blocks=n_blocks,
                  throughput=10.0, free_cache_tokens=1000, max_session_length=64, announced_at=now - 1)
    values.update(fields)
    return ServerRecord(**values)


def envelope(identity: Identity, key: str, body: BaseModel, expiration: float = NOW + 10) -> dict:
    """An honest DHT value: `body` signed by `identity`, addressed to `key`."""
    return seal(kind_of(body).value, body.model_dump_json().encode(), key=key, expiration=expiration,
                public_key=identity.public_key, sign=identity.sign).to_value()


def forged(identity: Identity, key: str, body: Union[dict, bytes], kind: str = "server",
           expiration: float = NOW + 10, subkey: Optional[str] = None) -> dict:
    """A value signed by `identity` over any body (a dict is dumped as JSON without a schema), as
    a hostile peer makes them. `subkey` is the peer id the signature names (default: the signer's)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    subkey = subkey or peer_id_from_public_key(identity.public_key)
    signature = identity.sign(signing_payload(kind, subkey, expiration, data))
    return {"version": ENVELOPE_VERSION, "kind": kind, "key": key, "expiration": expiration, "body": data,
            "public_key": identity.public_key, "signature": signature}


def body_dict(record: ServerRecord, **changes) -> dict:
    values = json.loads(record.model_dump_json())
    values.update(changes)
    return values


def announcement(identity: Identity, record: ServerRecord, expiration: float = NOW + 10) -> dict[str, dict[str, dict]]:
    """{key: {peer id: value}} for every block key of the record's span, as a lookup returns it."""
    return {block_key(record.model_id, b): {identity.peer_id: envelope(identity, block_key(record.model_id, b), record,
                                                                       expiration)}
            for b in range(record.start, record.end)}
