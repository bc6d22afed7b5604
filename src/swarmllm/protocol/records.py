"""DHT record schemas, the rules every record must pass, and the readers' parsers.

A node hosting blocks [start, end) of model M stores, for every block i in its span, a
`ServerRecord` under key `block_key(M, i)`, and a `ModelRecord` under `MODEL_REGISTRY_KEY`
so that gateways can list models; a machine waiting to pair (`swarmllm pair`) stores a
`PairingRecord` (pairing.py) under a key derived from its code. Every value travels in a
`SignedRecord` (envelope.py) whose subkey is the writer's peer id: a node can only speak for
itself. Records expire at most `MAX_RECORD_TTL` s after each refresh, so a node that stops
refreshing drops out.

`check_record` is the one definition of a valid record, used by the DHT validator every node
runs when something is stored with it or fetched through it (swarm/validation.py) and again
by every reader (`parse_records`, `parse_model_records`). A record is refused when:
- it is not a signed envelope, its subkey is not its signer's peer id, or the signature fails;
- its body has unknown fields, out-of-range values (non-finite numbers, a model id outside
  `MODEL_ID_PATTERN`, n_blocks above `MAX_MODEL_BLOCKS`), or names another peer;
- its span is empty or outside [0, n_blocks), or it is stored under a key its body does not
  cover (a server record: only its span's block keys and those of a claimed `moving_to` span;
  a registry entry: only the registry key);
- its n_blocks differs from the model's, where the checker knows it (`known_n_blocks`: the
  catalog for DHT validators, the reader's own copy of the model header for readers);
- it was announced more than `MAX_CLOCK_SKEW` s in the future, or expires more than one TTL
  (+ the skew) ahead;
- a server record carries an owner certificate (owners.py) that is not for its signer, does
  not verify, or is not valid at `now`;
- a pairing record (pairing.py) is not its signer's, or is stored under a key of another shape;
- a demand record (demand.py) is not its signer's, is stored under another model's demand key,
  or holds values outside its bounds;
- a release record (releases.py) is not signed by one of the checker's trusted release keys
  (`release_signers`), or fails `verify_release`. Releases alone may be stored for longer than
  MAX_RECORD_TTL (up to releases.MAX_RELEASE_TTL): their signer is the project, not a peer.
Passing says only that the writer wrote it: throughput, free cache and the rest are the
writer's claims, which routing weighs against its own measurements.

Forward compatibility (v8): a server record whose `protocol_version` is above ours was written
by a newer release, which may have added optional fields (messages.py: such releases keep
MIN_PROTOCOL_VERSION). Its unknown top-level fields are dropped before it is validated, so
readers still see it and can route through it when its [min_protocol_version, protocol_version]
range overlaps theirs, or name its version when it does not; every other rule holds as above,
and any other body with an unknown field is refused.

Storage bounds (`MAX_SUBKEYS_PER_KEY`, `MAX_RECORDS_PER_PEER`, `MAX_STORED_RECORDS`) are
constants here so that every node enforces the same ones (swarm/validation.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from enum import Enum
from typing import Any, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarmllm.protocol.demand import DemandRecord, check_demand_record, demand_key
from swarmllm.protocol.envelope import RecordRejected, SignedRecord, open_envelope, validation_detail
from swarmllm.protocol.messages import MAX_VERSION_NUMBER, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, fill_pre_v8_minimum
from swarmllm.protocol.owners import OwnerCertificate, verify_certificate
from swarmllm.protocol.pairing import PairingRecord, check_pairing_record
from swarmllm.protocol.releases import RELEASE_KIND, ReleaseRecord, verify_release

MODEL_REGISTRY_KEY = "swarmllm.v1.models"
_KEY_PREFIX = "swarmllm.v1."

MAX_RECORD_TTL = 15.0       # s a record may be stored ahead (ServerConfig.record_ttl's default and bound)
MAX_CLOCK_SKEW = 5.0        # s peers' DHT clocks may differ (hivemind asks for 3)
MAX_MODEL_BLOCKS = 4096     # more transformer blocks than any published model has: a bound on lookups
MAX_THROUGHPUT = 1e9        # tokens/s a record may claim: finite and bounded, not believed (routing measures)
MAX_ADDRESSES = 8           # multiaddrs in one record
MAX_PRICE = 1e6             # credits per 1,000 tokens a record may announce (finite and bounded)
MAX_LOAD = 2**20            # sessions or queued steps a record may claim (routing caps what it believes: load.py)
MAX_COUNTER = 2**62         # tokens or bytes a node's announced counters may claim (finite and bounded)
MAX_UPTIME = 10 * 365 * 86400.0  # s a node may claim to have been up (ten years)
MAX_CPU_PERCENT = 100.0 * 4096   # process CPU a node may claim (100 = one core busy)
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"  # catalog names and file stems
PEER_ID_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{1,128}$"        # base58

# What a DHT node stores for others (swarm/validation.py); refreshing a held entry is always allowed.
MAX_SUBKEYS_PER_KEY = 256   # writers under one key (servers of a block; registry entries)
MAX_RECORDS_PER_PEER = 512  # entries one writer may hold in a node's storage (a span + its registry entry)
MAX_STORED_RECORDS = 16384  # entries in a node's storage in all (x MAX_RECORD_BYTES: 64 MiB at most)


def block_key(model_id: str, block: int) -> str:
    return f"{_KEY_PREFIX}{model_id}.block{block}"


def model_registry_key() -> str:
    return MODEL_REGISTRY_KEY


class RecordKind(str, Enum):
    SERVER = "server"   # a ServerRecord, under the block keys of its span
    MODEL = "model"     # a ModelRecord, under MODEL_REGISTRY_KEY
    PAIRING = "pairing"  # a PairingRecord (pairing.py), under pairing_key(rendezvous), while `swarmllm pair` waits
    DEMAND = "demand"    # a DemandRecord (demand.py), under demand_key(model), subkey = the gateway
    RELEASE = "release"  # a ReleaseRecord (releases.py), under RELEASE_KEY, subkey = the release key's id


class ServerState(str, Enum):
    JOINING = "joining"   # loading weights; not routable yet
    ONLINE = "online"     # accepting sessions
    LEAVING = "leaving"   # draining: finishing in-flight steps, refusing new sessions


_BODY = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


_NAME = r"^[A-Za-z0-9._+-]{0,48}$"  # a version, dtype or ISA name: no spaces or separators of the key


class ComputeClass(BaseModel):
    """What decides a span's exact output, announced in its ServerRecord (a claim, like the rest).

    Two servers of one class compute bit-identical outputs for the same step (same inputs,
    positions and cache), whatever else they batch with; only outputs of one class are compared
    bit for bit, and outputs of different classes within the cross-class tolerance of
    docs/verification.md. The server detects its own class at start-up (runtime/compute_class.py).
    """

    model_config = _BODY

    compute_dtype: str = Field("float32", pattern=_NAME)  # "float32", "bfloat16" or "float16"
    weight_quant: str = Field("none", pattern=_NAME)      # weights kept as "none" (compute dtype), "int8" or "int4"
    kv_dtype: str = Field("auto", pattern=_NAME)          # KV cache: "auto" (compute dtype) or "int8"
    software_version: str = Field("", pattern=_NAME)      # swarmllm's version
    torch_version: str = Field("", pattern=_NAME)         # torch.__version__, build suffix included ("2.13.0+cpu")
    torch_build: str = Field("", pattern=_NAME)           # torch's git commit, first 12 hex digits
    isa: str = Field("", pattern=_NAME)                   # kernel path: "avx512-bf16", "avx512", "avx2", "cuda-sm90"...
    row_tile: int = Field(1, ge=0, le=64)                 # rows per call of short steps (engine/row_tiles.py;
    # 0 = ANY_ROWS: one call for any row count, the quantized kernels)
    threads: int = Field(1, ge=1, le=4096)                # torch intra-op threads: float32 matrix-vector
    # kernels split their sums between threads, so 1 and 2 threads round a decode step differently

    @property
    def key(self) -> str:
        """A stable short name of the class: readable parts, then a hash of every field.

        e.g. "float32.none.auto.avx2.r1.t2.3f9a2c41d0e5"; equal keys <=> equal classes."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
        return f"{self.compute_dtype}.{self.weight_quant}.{self.kv_dtype}.{self.isa or 'cpu'}.r{self.row_tile}." \
               f"t{self.threads}.{digest}"


class ServerRecord(BaseModel):
    """What a node announces about itself for one model (a claim, signed by the node)."""

    model_config = _BODY

    peer_id: str = Field(max_length=128)  # base58 libp2p peer id: must be the record's signer
    model_id: str = Field(pattern=MODEL_ID_PATTERN)  # catalog id of the hosted model
    start: int = Field(ge=0)          # first hosted block (inclusive)
    end: int = Field(gt=0)            # last hosted block (exclusive); start < end <= n_blocks
    n_blocks: int = Field(gt=0, le=MAX_MODEL_BLOCKS)  # total blocks of the model (so anyone can spot gaps)
    state: ServerState = ServerState.ONLINE
    throughput: float = Field(ge=0, le=MAX_THROUGHPUT)  # decode tokens/s through the span, measured at start-up
    free_cache_tokens: int = Field(ge=0, le=2**40)  # KV positions it can still reserve for new sessions
    max_session_length: int = Field(gt=0, le=2**40)  # longest session it accepts
    active_sessions: int = Field(default=0, ge=0, le=2**32)  # sessions open here now (a claim; routing caps it)
    # v7: steps waiting in the node's batcher when it announced (server/batching.py): a claim of load, which
    # routing weighs against the sessions it opened here itself (client/load.py).
    queued_steps: int = Field(default=0, ge=0, le=MAX_LOAD)
    # v7: credits per 1,000 tokens this node asks for computing its span (0 = free); a request's max_price
    # keeps its chain under the sum of its hops' prices (client/routing.py).
    price: float = Field(default=0.0, ge=0, le=MAX_PRICE)
    compute_class: ComputeClass = ComputeClass()  # what decides its outputs bit for bit (dtype, quant, kernels)
    protocol_version: int = Field(PROTOCOL_VERSION, ge=1, le=MAX_VERSION_NUMBER)  # the newest version it speaks
    # v8: the oldest version it speaks; routing uses it when the two ranges overlap (protocol/versions.py)
    min_protocol_version: int = Field(MIN_PROTOCOL_VERSION, ge=1, le=MAX_VERSION_NUMBER)
    addresses: tuple[str, ...] = Field((), max_length=MAX_ADDRESSES)  # multiaddrs the node is reachable at
    announced_at: float = 0.0         # DHT time of this announcement: the newest record of a peer wins
    # Set while the node is about to move to another span (a claim, so that two nodes do not
    # both rush into the same hole); planners count it as covering this span instead.
    moving_to: Optional[tuple[int, int]] = None
    ring: bool = False                # can start or end a ring-decoding chain (holds the model's head)
    # v6: nobody could dial the node (its reachability probe), so it is reached through a relay: its
    # addresses lead with <relay>/p2p-circuit ones. A claim; clients measure the round trip through it.
    relayed: bool = False
    # Whose machine this is: its owner's certificate for this peer id (owners.py), checked by
    # check_record; None = no owner (the node counts as public in every trust radius).
    owner: Optional[OwnerCertificate] = None
    # v9: the node's counters when it announced, for dashboards (server/counters.py). Claims, never used by
    # routing; readers show them as "announced" and bound what they believe of them (gateway/swarm_history.py).
    uptime_seconds: float = Field(default=0.0, ge=0, le=MAX_UPTIME)   # since the node's process started
    memory_bytes: int = Field(default=0, ge=0, le=MAX_COUNTER)         # the process's resident memory (RSS)
    cpu_percent: float = Field(default=0.0, ge=0, le=MAX_CPU_PERCENT)  # process CPU over the last announce period
    tokens_served: int = Field(default=0, ge=0, le=MAX_COUNTER)        # positions computed through its span since start
    bytes_sent: int = Field(default=0, ge=0, le=MAX_COUNTER)           # stream payload bytes up since start
    bytes_received: int = Field(default=0, ge=0, le=MAX_COUNTER)       # stream payload bytes down since start

    @model_validator(mode="before")
    @classmethod
    def _before_v8(cls, data):
        return fill_pre_v8_minimum(data)

    @model_validator(mode="after")
    def _spans_within_the_model(self) -> "ServerRecord":
        if self.min_protocol_version > self.protocol_version:
            raise ValueError(f"protocol range v{self.min_protocol_version} to v{self.protocol_version} is empty")
        if not self.start < self.end <= self.n_blocks:
            raise ValueError(f"span [{self.start}, {self.end}) is empty or outside the model's {self.n_blocks} blocks")
        if self.moving_to is not None and not 0 <= self.moving_to[0] < self.moving_to[1] <= self.n_blocks:
            raise ValueError(f"moving_to {self.moving_to} is empty or outside the model's {self.n_blocks} blocks")
        if any(len(address) > 256 for address in self.addresses):
            raise ValueError("a multiaddr is longer than 256 characters")
        return self

    @property
    def protocol_range(self) -> tuple[int, int]:
        return self.min_protocol_version, self.protocol_version

    @property
    def span_length(self) -> int:
        return self.end - self.start

    # The compute class's parts under the names readers used before v4 (routing, the dashboard).
    @property
    def compute_dtype(self) -> str:
        return self.compute_class.compute_dtype

    @property
    def quant(self) -> str:
        return self.compute_class.weight_quant

    @property
    def kv_dtype(self) -> str:
        return self.compute_class.kv_dtype

    @property
    def software_version(self) -> str:
        return self.compute_class.software_version

    def covers(self, block: int) -> bool:
        return self.start <= block < self.end


class ModelRecord(BaseModel):
    """A model-registry entry (key MODEL_REGISTRY_KEY, subkey = the serving peer): a model it serves."""

    model_config = _BODY

    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    n_blocks: int = Field(gt=0, le=MAX_MODEL_BLOCKS)


Body = Union[ServerRecord, ModelRecord, PairingRecord, DemandRecord, ReleaseRecord]
_BODY_TYPES: dict[RecordKind, type[BaseModel]] = {RecordKind.SERVER: ServerRecord, RecordKind.MODEL: ModelRecord,
                                                  RecordKind.PAIRING: PairingRecord, RecordKind.DEMAND: DemandRecord}


def kind_of(body: BaseModel) -> RecordKind:
    for kind, body_type in _BODY_TYPES.items():
        if isinstance(body, body_type):
            return kind
    raise TypeError(f"{type(body).__name__} is not a DHT record body")


def _stored_under_covered_key(record: ServerRecord, key: str) -> bool:
    prefix = f"{_KEY_PREFIX}{record.model_id}.block"
    suffix = key[len(prefix):] if key.startswith(prefix) else ""
    if not suffix.isdigit() or str(int(suffix)) != suffix:
        return False
    block = int(suffix)
    return record.covers(block) or (record.moving_to is not None and record.moving_to[0] <= block < record.moving_to[1])


def _server_record(raw: str) -> ServerRecord:
    """A ServerRecord body; one of a newer protocol version loses its unknown top-level fields first
    (module docstring: forward compatibility). Raises ValueError (a ValidationError) otherwise."""
    try:
        return ServerRecord.model_validate_json(raw)
    except ValidationError:
        try:
            fields = json.loads(raw)
        except (ValueError, RecursionError):
            fields = None
        newer = isinstance(fields, dict) and type(fields.get("protocol_version")) is int and \
            fields["protocol_version"] > PROTOCOL_VERSION
        if not newer:
            raise
        return ServerRecord.model_validate({k: v for k, v in fields.items() if k in ServerRecord.model_fields})


def check_record(value: Any, key: str, subkey: Any, *, now: float,
                 known_n_blocks: Mapping[str, int] = {}, release_signers: frozenset[str] = frozenset()) -> Body:
    """The body of a DHT value stored under (key, subkey), if it passes every rule (module
    docstring); RecordRejected saying which it fails otherwise. `now` is the checker's DHT time;
    `release_signers`: the peer ids of the release keys it trusts (releases.trusted_signers)."""
    envelope: SignedRecord = open_envelope(value, subkey)
    if envelope.key != key:
        raise RecordRejected(f"addressed to key {envelope.key!r}, stored under {key!r}")
    if envelope.kind == RELEASE_KIND:
        return verify_release(envelope, release_signers, now=now)
    if envelope.expiration > now + MAX_RECORD_TTL + MAX_CLOCK_SKEW:
        raise RecordRejected(f"expires {envelope.expiration - now:.0f} s from now; the limit is {MAX_RECORD_TTL:.0f} s")
    try:
        kind = RecordKind(envelope.kind)
        body = _server_record(envelope.body) if kind == RecordKind.SERVER else \
            _BODY_TYPES[kind].model_validate_json(envelope.body)
    except ValueError as e:
        detail = validation_detail(e) if isinstance(e, ValidationError) else f"unknown kind {envelope.kind!r}"
        raise RecordRejected(f"invalid {envelope.kind} record: {detail}") from None
    if isinstance(body, PairingRecord):
        return check_pairing_record(body, key, subkey, now=now, skew=MAX_CLOCK_SKEW)
    if isinstance(body, DemandRecord):
        return check_demand_record(body, key, subkey, now=now, skew=MAX_CLOCK_SKEW)
    known = known_n_blocks.get(body.model_id)
    if known is not None and body.n_blocks != known:
        raise RecordRejected(f"claims {body.n_blocks} blocks for {body.model_id}, which has {known}")
    if isinstance(body, ModelRecord):
        if key != MODEL_REGISTRY_KEY:
            raise RecordRejected(f"a registry entry stored under {key!r}")
        return body
    if body.peer_id != subkey:
        raise RecordRejected(f"a record of peer {body.peer_id} signed by peer {subkey}")
    if not _stored_under_covered_key(body, key):
        raise RecordRejected(f"stored under {key!r}, which its span [{body.start}, {body.end}) does not cover")
    if not math.isfinite(body.announced_at) or body.announced_at > now + MAX_CLOCK_SKEW:
        raise RecordRejected(f"announced {body.announced_at - now:.0f} s in the future")
    if body.owner is not None:
        verify_certificate(body.owner, subkey, now=now)  # the signer's certificate, valid now: else refused
    return body


def parse_records(found: Mapping[str, Mapping[str, Any]], model_id: Optional[str] = None,
                  n_blocks: Optional[int] = None, *, now: float) -> list[ServerRecord]:
    """Verified server records, one per peer, from raw DHT values ({key: {subkey: value}}).

    Every value is checked again (`check_record`; with `n_blocks`, records of `model_id` that
    claim another block count are dropped too). Values that fail are skipped: any peer can write
    to the DHT, so a bad record must not make a lookup fail. A peer that moved leaves older
    records under its old blocks until they expire; the newest announcement of each peer wins.
    """
    known = {model_id: n_blocks} if model_id is not None and n_blocks is not None else {}
    records: dict[str, ServerRecord] = {}
    for key, subs in found.items():
        for subkey, value in subs.items():
            try:
                record = check_record(value, key, subkey, now=now, known_n_blocks=known)
            except RecordRejected:
                continue
            if not isinstance(record, ServerRecord) or (model_id is not None and record.model_id != model_id):
                continue
            previous = records.get(record.peer_id)
            if previous is None or record.announced_at >= previous.announced_at:
                records[record.peer_id] = record
    return list(records.values())


def parse_model_records(found: Mapping[str, Any], *, now: float,
                        known_n_blocks: Mapping[str, int] = {}) -> dict[str, ModelRecord]:
    """Verified registry entries ({subkey: value} under MODEL_REGISTRY_KEY) -> {model id: record}.

    Each serving peer writes its own entry. Where entries of one model disagree on n_blocks
    (and the reader does not know the model), the count most peers announce wins, the smaller
    one on a tie: a lone writer cannot make readers look up more blocks than the others announce.
    """
    votes: dict[str, Counter] = {}
    for subkey, value in found.items():
        try:
            record = check_record(value, MODEL_REGISTRY_KEY, subkey, now=now, known_n_blocks=known_n_blocks)
        except RecordRejected:
            continue
        if isinstance(record, ModelRecord):
            votes.setdefault(record.model_id, Counter())[record.n_blocks] += 1
    return {model_id: ModelRecord(model_id=model_id, n_blocks=min(counts, key=lambda n: (-counts[n], n)))
            for model_id, counts in votes.items()}


def parse_demand_records(found: Mapping[str, Any], model_id: str, *, now: float) -> list[DemandRecord]:
    """Verified demand records ({subkey: value} under demand_key(model_id)), one per gateway.

    Values that fail `check_record` are skipped, as in `parse_records`: anyone can write."""
    key, records = demand_key(model_id), []
    for subkey, value in found.items():
        try:
            record = check_record(value, key, subkey, now=now)
        except RecordRejected:
            continue
        if isinstance(record, DemandRecord):
            records.append(record)
    return records
