"""Typed, versioned wire messages of the inference protocol.

One session = one bidirectional stream from the client to each server of its chain
(handler `SESSION_HANDLER`). Hidden states flow client -> server 1 -> server 2 -> ... ->
last server -> client: each server pushes its output to the next one over a push stream
(handler `PUSH_HANDLER`), and only the last server answers on the client's stream. Every
server may send an `ErrorReply` to the client on its own session stream.

    client                 server A [0,10)      server B [10,20)     server C [20,30)
      |-- OpenSession ------->|                      |                    |
      |-- OpenSession ------------------------------>|                    |
      |-- OpenSession ------------------------------------------------->|
      |<- SessionOpened ...  (one per server)
      |-- Step(h, pos) ------>|-- Step(h', pos) ---->|-- Step(h'', pos) ->|
      |<------------------------------------------------- StepResult ----|

Messages are pydantic models, frozen, with a literal `type` tag; tensors travel beside the
header as raw bytes described by a `TensorMeta` (see codec.py). Steps are deterministic
given (session inputs, positions): a step can be replayed on another server or on two
servers at once and the outputs compared, which later verification builds on.

Ring decoding (optional, `Step.ring`): the last server samples the next token itself (with
the session's sampling parameters and a counter-based RNG state, so any server can continue
it) and sends it straight to the first server as a `RingToken`; the first server embeds it
and runs the next step. The client only watches: each token reaches it as a `TokenResult`
off the critical path, so a token costs one trip around the ring of servers instead of
client -> chain -> client.

      client            A [0,10)          B [10,20)         C [20,30)
        |-- Step(ring) ->|-- Step(ring) --->|-- Step(ring) --->| samples t0
        |<--------------------------------------- TokenResult(t0)
        |                |<------------------------- RingToken(t0)
        |                | embeds t0 -- Step ->|-- Step ------->| samples t1 ...

Who may send what (v3). A session id is a capability that is never enough alone: a server
checks every message against the libp2p-authenticated peer id of the stream it came on (the
Noise handshake proves it), never against what a message says about its sender.
- CloseSession, Reroute, SetUpstream and RingStop: only the peer that opened the session.
- Step: only the session's `upstream` (OpenSession.upstream: the previous server of the
  chain, pushing); for the chain's first server (upstream None), only the opener. After a
  failover the client names the new previous server with `SetUpstream`.
- RingToken: only the peer the ring's `RingSpec.last_peer_id` names (the chain's last
  server), and only while that ring runs on the first server.
A refusal is an `ErrorReply(forbidden)` to the offender's stream; the session carries on.

Receipts (v4). After every step it computes (sent on, answered or sampled), a server sends the
session's client a `StepReceipt` on its own session stream: which step, positions and span, the
sha256 of the input and output tensor bytes, its compute class, signed with its identity key
(receipts.py). The client checks each against the stream's authenticated peer id, the bytes it
sent and received, and the neighbouring servers' receipts (input hash = the previous server's
output hash); a step counts as done only when its result and every receipt of the chain are in.

      client            A [0,10)          B [10,20)         C [20,30)
        |-- Step ------->|-- Step --------->|-- Step --------->|
        |<- StepReceipt -|<- (push stream) -|                  |
        |<- StepReceipt ------------------ -|                  |
        |<------------------------------------ StepResult -----|
        |<------------------------------------ StepReceipt ----|
A peer over one of a server's per-peer quotas (sessions, KV memory, compute time, streams,
bytes in flight, positions per step, rollbacks) gets `ErrorReply(over_quota)` naming the
limit in `ErrorReply.quota`.

Versions (v8, versions.py). Every peer speaks the range [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION];
two peers interoperate when their ranges overlap, and speak the highest version both know. The
client sends its range in `OpenSession` (protocol_version, min_protocol_version: those two fields
keep their names and meaning in every version), the server negotiates and answers with the
version in `SessionOpened.protocol_version`, or refuses with `ErrorReply(version_mismatch)` and a
sentence naming both ranges and which side must upgrade. Server records carry the same range
(records.py), so a client only routes through servers it can talk to. How releases move the range:
- a release that only adds optional fields (with defaults) raises PROTOCOL_VERSION and keeps
  MIN_PROTOCOL_VERSION, and sends the new fields only in sessions whose negotiated version has
  them (an OpenSession's new fields only to servers whose record's range includes that version);
  readers of older versions parse what it sends, since every field they know is still there;
- a release that changes a meaning or removes something raises MIN_PROTOCOL_VERSION above the
  versions it can no longer serve: peers of those versions are refused with the clear error.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

# What each version changed: versions.HISTORY (a new version adds its line there; docs/protocol.md shows it).

PROTOCOL_VERSION = 9       # the newest version this code speaks
MIN_PROTOCOL_VERSION = 8   # the oldest version this code still speaks: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION]
MAX_VERSION_NUMBER = 2**16  # a bound on any version number a peer sends


def fill_pre_v8_minimum(data):
    """A message or record of a peer from before v8 has no min_protocol_version: such a peer speaks its
    own version only (its range is [protocol_version, protocol_version]), not [MIN_PROTOCOL_VERSION, ...]."""
    if isinstance(data, dict) and "min_protocol_version" not in data:
        newest = data.get("protocol_version")
        if type(newest) is int and newest < MIN_PROTOCOL_VERSION:
            return {**data, "min_protocol_version": newest}
    return data


SESSION_HANDLER = "swarmllm.v1.session"   # client -> each server of the chain
PUSH_HANDLER = "swarmllm.v1.push"         # server -> next server of the chain
PING_HANDLER = "swarmllm.v1.ping"         # anyone -> server: liveness and RTT
FILE_HANDLER = "swarmllm.v1.file"         # anyone -> server: byte ranges of the model file it holds

# Wire formats of hidden states. fp32 is exact; 16-bit halves the bytes per hop; "int8" is
# blockwise int8 with a few outliers per row (see int8_wire.py): a one-token frame is 0.29x an fp32 one.
WireDtype = Literal["float32", "float16", "bfloat16", "int8"]
WIRE_DTYPES: tuple[str, ...] = WireDtype.__args__

MAX_POSITIONS_PER_STEP = 8192  # a single step may carry at most this many new positions
MAX_SESSION_LENGTH = 131072    # sanity bound on max_length, whatever the node's memory
MAX_RANGE_BYTES = 16 * 2**20   # a ReadRange asks for at most this many bytes


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorMeta(_Wire):
    """Describes the raw bytes that follow a header."""

    dtype: WireDtype                                  # element format on the wire
    shape: tuple[int, ...]                            # e.g. (batch=1, positions, hidden)


class NextHop(_Wire):
    """Where a server pushes its output for a session instead of replying to the client."""

    peer_id: str     # base58 libp2p peer id of the next server
    session_id: str  # the session id the next server knows this session by


class OpenSession(_Wire):
    """Client -> server: reserve KV cache for a session over blocks [start, end)."""

    type: Literal["open_session"] = "open_session"
    protocol_version: int = Field(PROTOCOL_VERSION, ge=1, le=MAX_VERSION_NUMBER)  # the newest version the client
    # speaks; with min_protocol_version, its range (module docstring: these two fields never change meaning)
    min_protocol_version: int = Field(MIN_PROTOCOL_VERSION, ge=1, le=MAX_VERSION_NUMBER)  # the oldest it speaks (v8)
    session_id: str = Field(min_length=8, max_length=64)  # random, chosen by the client
    model_id: str                     # catalog id of the model, e.g. "smollm2-135m"
    start: int = Field(ge=0)          # first block to run (inclusive)
    end: int = Field(gt=0)            # last block to run (exclusive)
    max_length: int = Field(gt=0, le=MAX_SESSION_LENGTH)  # positions to reserve KV cache for
    wire_dtype: WireDtype = "float32"  # format of pushed/returned hidden states (the client's choice)
    next_hop: Optional[NextHop] = None  # None: this server is last and replies to the client
    upstream: Optional[str] = None      # peer id of the previous server: the only peer whose Steps this session
    # takes; None: this server is the chain's first and takes Steps only from the peer that opened the session
    report_outputs: bool = False        # also send the client every step's output as a StepResult (a chain's middle
    # servers and a ring's last one too): what a verifying client checks this server's span against (v5)

    @model_validator(mode="before")
    @classmethod
    def _before_v8(cls, data):
        return fill_pre_v8_minimum(data)

    @model_validator(mode="after")
    def _range_not_empty(self) -> "OpenSession":
        if self.min_protocol_version > self.protocol_version:
            raise ValueError(f"protocol range v{self.min_protocol_version} to v{self.protocol_version} is empty")
        return self


class SessionOpened(_Wire):
    """Server -> client: the session is ready; KV cache for max_length is reserved."""

    type: Literal["session_opened"] = "session_opened"
    session_id: str
    peer_id: str                 # the server's own peer id (for the client's records)
    start: int
    end: int
    max_length: int
    protocol_version: int = Field(ge=1, le=MAX_VERSION_NUMBER)  # the negotiated version: the session speaks it (v8)


class RingSampling(_Wire):
    """How the last server samples in ring decoding: the session's sampling parameters and RNG state.

    The RNG is counter-based (engine/sampling.py): draw n uses a generator seeded from
    (seed, n), so `draws` is the whole state and a replacement server continues exactly.
    """

    temperature: float = Field(default=0.0, ge=0.0)  # 0 = greedy
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    draws: int = Field(default=0, ge=0)               # random draws already made in this session
    # v9 (engine/sampling.py): omitted from the frame while they hold their defaults (see _omit_defaults).
    min_p: float = Field(default=0.0, ge=0.0, lt=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    penalty_last_n: int = Field(default=64, ge=-1, le=MAX_SESSION_LENGTH)
    # the last penalty_last_n context tokens before the ring's first token; the server appends what it samples
    history: tuple[Annotated[int, Field(ge=0, lt=2**31)], ...] = Field(default=(), max_length=MAX_SESSION_LENGTH)

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler):
        data = handler(self)
        for name in V9_RING_FIELDS:
            if getattr(self, name) == RingSampling.model_fields[name].default:
                data.pop(name, None)
        return data

    @property
    def needs_v9(self) -> bool:
        return any(getattr(self, name) != RingSampling.model_fields[name].default for name in V9_RING_FIELDS)


V9_RING_FIELDS = ("min_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "penalty_last_n", "history")


class RingSpec(_Wire):
    """Carried by the step that starts ring decoding; every server passes it on with the step.

    The step's own output yields token 0; the server holding the end of the chain then sends
    each token to `first_hop` as a `RingToken` with step id (this step's id + k) until
    `max_tokens` tokens are out or one of `eos_token_ids` is sampled. A later step from the
    client (any id outside that range) or a `RingStop` ends the ring.
    """

    sampling: RingSampling
    max_tokens: int = Field(gt=0, le=MAX_SESSION_LENGTH)
    eos_token_ids: tuple[int, ...] = ()
    first_hop: NextHop                 # the chain's first server: where tokens go to be embedded
    last_peer_id: str                  # the chain's last server: the only peer the first server takes RingTokens from


def token_bytes(token_ids) -> bytes:
    """What a receipt's input hash covers for a step of token ids (Step.token_ids): int64 little-endian."""
    return b"".join(int(t).to_bytes(8, "little", signed=True) for t in token_ids)


class Step(_Wire):
    """Hidden states for new positions: client -> first server, or server -> next server.

    Positions [start_position, start_position + T) are processed, where T = tensor.shape[1].
    start_position must equal the number of positions the server has cached, or be smaller
    to roll the cache back (speculative decoding, replay after failover).
    """

    type: Literal["step"] = "step"
    session_id: str
    step_id: int = Field(ge=0)         # strictly increasing per session; duplicates are rejected
    start_position: int = Field(ge=0)  # absolute position of the first new token
    tensor: TensorMeta                 # hidden states [1, T, hidden]
    replay_end: Optional[int] = Field(default=None, gt=0)  # failover replay: the server whose blocks
    # reach this block answers the client instead of pushing on (the servers after it already
    # hold these positions)
    ring: Optional[RingSpec] = None    # start ring decoding with this step (see RingSpec)
    # v6: token ids instead of hidden states, from a client to the chain's first server only (a lite client
    # holds no embeddings): that server embeds them. `tensor` then describes the embedded states [1, T, hidden]
    # and the frame carries no payload; receipts hash the ids as int64 little-endian bytes (token_bytes).
    token_ids: Optional[tuple[int, ...]] = Field(default=None, max_length=MAX_POSITIONS_PER_STEP)


class StepResult(_Wire):
    """Last server -> client: the chain's output hidden states for a step."""

    type: Literal["step_result"] = "step_result"
    session_id: str
    step_id: int
    start_position: int
    tensor: TensorMeta
    compute_seconds: float = 0.0  # time this server spent computing (for diagnostics)


class StepReceipt(_Wire):
    """Server -> client (its session stream): "I computed this step", signed with the server's identity key.

    Sent after every step a server computes, once its output is on its way. Hashes cover the
    tensor bytes only (TensorMeta + payload as they travelled), not the headers, which differ per
    hop. On the wire it is a binary frame (receipts.py: layout b"V", the signed bytes + the
    signature); the client keeps the receipts it verified (client/receipts.py), and credits will be
    paid on them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    type: Literal["step_receipt"] = "step_receipt"
    session_id: str = Field(min_length=1, max_length=64)  # the session id this server knows the session by
    step_id: int = Field(ge=0, lt=2**63)          # the step's id
    start_position: int = Field(ge=0, lt=2**63)   # first position computed
    positions: int = Field(ge=1, le=MAX_POSITIONS_PER_STEP)  # positions computed (the step's T)
    start: int = Field(ge=0, lt=2**32)            # blocks [start, end) run for this session
    end: int = Field(gt=0, lt=2**32)
    model_id: str = Field(min_length=1, max_length=128)
    input_hash: bytes = Field(min_length=32, max_length=32)   # sha256 of the input tensor's wire bytes (payload);
    # a ring token's embedding is hashed as float32 bytes
    output_hash: bytes = Field(min_length=32, max_length=32)  # sha256 of the output tensor's wire bytes as sent
    compute_class: str = Field(max_length=255)    # ComputeClass.key of the server that computed it
    peer_id: str = Field(min_length=1, max_length=128)  # the signer: must be the stream's authenticated peer id
    time: float = Field(allow_inf_nan=False)      # server's wall clock (unix seconds) when it signed
    signature: bytes = Field(min_length=64, max_length=64)  # Ed25519 over receipts.DOMAIN + receipts.payload_of(...)


class RingToken(_Wire):
    """Last server -> first server (push stream): embed this token and run it as step `step_id`."""

    type: Literal["ring_token"] = "ring_token"
    session_id: str                    # the first server's session id
    step_id: int = Field(ge=0)
    position: int = Field(ge=0)        # the token's position (where its embedding goes)
    token_id: int = Field(ge=0)


class TokenResult(_Wire):
    """Last server -> client in ring decoding: token k of the ring, sampled from step `step_id`'s output.

    When it arrives, positions up to `position` (exclusive) are committed on every server of
    the chain; the token itself sits at `position` and is not computed yet.
    """

    type: Literal["token_result"] = "token_result"
    session_id: str
    step_id: int
    position: int = Field(ge=0)
    token_id: int = Field(ge=0)
    draws: int = Field(ge=0)           # RNG state after this token (RingSampling.draws to continue from)
    finished: bool = False             # the ring ends with this token (EOS or max_tokens)
    compute_seconds: float = 0.0


class RingStop(_Wire):
    """Client -> last server: stop ring decoding now (the client found a stop string)."""

    type: Literal["ring_stop"] = "ring_stop"
    session_id: str


class Reroute(_Wire):
    """Client -> server: after a failover, push to a new next server from now on.

    If `replay_positions` > 0 the server first re-sends its own outputs for positions
    [0, replay_positions) (it keeps them per session) to the new next hop, so the
    replacement rebuilds its KV cache without anything upstream being recomputed. The
    outputs go in the same chunks the session's steps had (`replay_chunks`, as Steps with
    ids step_id, step_id + 1, ...): a batch of T positions does not round exactly like T
    single positions, and the replacement must compute exactly what the failed server did.
    """

    type: Literal["reroute"] = "reroute"
    session_id: str
    next_hop: Optional[NextHop]          # None: this server becomes the last of the chain
    replay_positions: int = Field(default=0, ge=0)
    replay_chunks: tuple[int, ...] = ()  # lengths of the original steps; they sum to replay_positions
    step_id: int = Field(default=0, ge=0)
    replay_end: Optional[int] = Field(default=None, gt=0)


class SetUpstream(_Wire):
    """Client (the session's opener) -> server: after a failover, take pushed Steps from this peer from now on.

    Sent to the server after a replaced gap before the retried step can reach it: the server
    before it is now the replacement, not the one named in OpenSession.upstream.
    """

    type: Literal["set_upstream"] = "set_upstream"
    session_id: str
    upstream: Optional[str]            # peer id of the new previous server; None: Steps from the opener only


class CloseSession(_Wire):
    """Client -> server: release the session's KV cache now."""

    type: Literal["close_session"] = "close_session"
    session_id: str


class QuotaInfo(_Wire):
    """Which per-peer limit of a server a request went over (ErrorReply.quota, code over_quota)."""

    limit: str                         # "sessions", "memory", "compute", "streams", "bytes_in_flight",
    # "step_positions" or "rollbacks" (server/quotas.py)
    value: float                       # the limit: sessions, budget share, compute s/s, streams, bytes, positions,
    # or rollbacks per window
    retry_after: Optional[float] = None  # seconds until the same request may pass; None: not at this size


class ErrorReply(_Wire):
    """Server -> client (on the session stream) or -> caller: a request failed."""

    type: Literal["error"] = "error"
    code: str                         # an ErrorCode value
    message: str                      # a sentence saying what was wrong
    session_id: Optional[str] = None  # the session concerned, if known
    step_id: Optional[int] = None     # the step concerned, if known
    peer_id: Optional[str] = None     # the server that raised it (a server may relay a downstream error)
    quota: Optional[QuotaInfo] = None  # with code over_quota: which limit, its value, when to retry


class Ping(_Wire):
    """Anyone -> server: liveness probe; the reply measures RTT."""

    type: Literal["ping"] = "ping"
    nonce: int = 0


class Pong(_Wire):
    """Server -> anyone: alive, and what it serves right now.

    The span lets a client re-validate a server it saw in the DHT earlier without a DHT
    lookup (lookups can come back partial while peers churn; a pong is first-hand).
    """

    type: Literal["pong"] = "pong"
    nonce: int = 0
    peer_id: str = ""
    model_id: str = ""
    start: int = Field(default=0, ge=0)
    end: int = Field(default=0, ge=0)
    accepting: bool = True         # False while leaving: alive, but takes no new sessions


class ReadRange(_Wire):
    """Anyone -> server (FILE_HANDLER): bytes [offset, offset + length) of the model file it serves.

    A node fetching its span from a URL asks peers first. Answered by `RangeData`, or by
    `ErrorReply(not_available)` when the node does not hold all of those bytes (a node that
    fetched only its own span holds the header and that span's tensors).
    """

    type: Literal["read_range"] = "read_range"
    model_id: str
    file_name: str                     # the file's name (e.g. "X.Q4_K_M.gguf"): same id, same file; v6: "" = the
    # file the node serves for model_id, whatever its name (a lite client reading the header)
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=MAX_RANGE_BYTES)


class RangeData(_Wire):
    """Server -> asker: the bytes follow the header as the payload (`length` of them)."""

    type: Literal["range_data"] = "range_data"
    model_id: str
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=MAX_RANGE_BYTES)
    total_size: int = Field(gt=0)      # the whole file's size (the asker checks it against its own)


Message = Annotated[
    Union[OpenSession, SessionOpened, Step, StepResult, StepReceipt, RingToken, TokenResult, RingStop, Reroute,
          SetUpstream, CloseSession, ErrorReply, Ping, Pong, ReadRange, RangeData],
    Field(discriminator="type"),
]
