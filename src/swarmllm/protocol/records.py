"""DHT record schemas: what a node announces and under which keys.

A node hosting blocks [start, end) of model M stores, for every block i in its span,
a `ServerRecord` under key `block_key(M, i)` with subkey = its peer id, and one entry under
`MODEL_REGISTRY_KEY` with subkey = M so that gateways can list models. Records expire
`ttl` seconds after each refresh, so a node that stops refreshing drops out of routing.

Records are unsigned today; `peer_id` is explicit so that a later signature check (and
per-node reputation, trust radius) attaches to the same identity without a redesign.
"""

from __future__ import annotations

from enum import Enum
from typing import Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from swarmllm.protocol.messages import PROTOCOL_VERSION

MODEL_REGISTRY_KEY = "swarmllm.v1.models"


def block_key(model_id: str, block: int) -> str:
    return f"swarmllm.v1.{model_id}.block{block}"


def model_registry_key() -> str:
    return MODEL_REGISTRY_KEY


class ServerState(str, Enum):
    JOINING = "joining"   # loading weights; not routable yet
    ONLINE = "online"     # accepting sessions
    LEAVING = "leaving"   # draining: finishing in-flight steps, refusing new sessions


class ServerRecord(BaseModel):
    """What a node announces about itself for one model."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peer_id: str                      # base58 libp2p peer id: the node's identity
    model_id: str                     # catalog id of the hosted model
    start: int = Field(ge=0)          # first hosted block (inclusive)
    end: int = Field(gt=0)            # last hosted block (exclusive)
    n_blocks: int = Field(gt=0)       # total blocks of the model (so anyone can spot gaps)
    state: ServerState = ServerState.ONLINE
    throughput: float = Field(ge=0)   # decode tokens/s through the whole span, measured at start-up
    free_cache_tokens: int = Field(ge=0)  # KV positions it can still reserve for new sessions
    max_session_length: int = Field(gt=0)  # longest session it accepts
    active_sessions: int = Field(default=0, ge=0)
    compute_dtype: str = "float32"
    quant: str = "none"               # weights kept as "none" (compute dtype), "int8" or "int4"
    kv_dtype: str = "auto"            # KV cache: "auto" (compute dtype) or "int8"
    protocol_version: int = PROTOCOL_VERSION
    addresses: tuple[str, ...] = ()   # multiaddrs the node is reachable at
    software_version: str = ""
    announced_at: float = 0.0         # DHT time of this announcement: the newest record of a peer wins
    # Set while the node is about to move to another span (a claim, so that two nodes do not
    # both rush into the same hole); planners count it as covering this span instead.
    moving_to: Optional[tuple[int, int]] = None
    ring: bool = False                # can start or end a ring-decoding chain (holds the model's head)

    @property
    def span_length(self) -> int:
        return self.end - self.start

    def covers(self, block: int) -> bool:
        return self.start <= block < self.end


MAX_MODEL_BLOCKS = 4096  # more transformer blocks than any published model has: a bound on lookups


class ModelRecord(BaseModel):
    """A model-registry entry (key MODEL_REGISTRY_KEY, subkey = model id): a model someone serves."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_id: str = Field(min_length=1, max_length=200)
    n_blocks: int = Field(gt=0, le=MAX_MODEL_BLOCKS)


def parse_model_records(found: Mapping[str, dict]) -> dict[str, ModelRecord]:
    """Registry values ({subkey: value}) -> {model id: record}; malformed or mismatched entries are skipped."""
    models: dict[str, ModelRecord] = {}
    for subkey, value in found.items():
        try:
            record = ModelRecord.model_validate(value)
        except ValueError:
            continue
        if record.model_id == subkey:
            models[record.model_id] = record
    return models


def parse_records(found: Mapping[str, Mapping[str, dict]], model_id: Optional[str] = None) -> list[ServerRecord]:
    """Validate raw DHT values ({key: {subkey: value}}) into records, one per peer.

    Malformed values are skipped: any peer can write to the DHT, so a bad record must not
    make a whole lookup fail. A peer that moved leaves older records under its old blocks
    until they expire; the newest announcement of each peer wins.
    """
    records: dict[str, ServerRecord] = {}
    for subs in found.values():
        for value in subs.values():
            try:
                record = ServerRecord.model_validate(value)
            except ValueError:
                continue
            if model_id is not None and record.model_id != model_id:
                continue
            known = records.get(record.peer_id)
            if known is None or record.announced_at >= known.announced_at:
                records[record.peer_id] = record
    return list(records.values())
