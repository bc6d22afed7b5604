"""Session bookkeeping and KV-cache memory accounting for one node.

Promises:
- a session is opened only if its whole KV cache (max_length positions over its blocks)
  fits in the node's budget, otherwise `ProtocolError(OUT_OF_CAPACITY)` with the numbers;
- reserved memory is returned exactly once, whether the session is closed by the client,
  by its stream going away, or by idle eviction;
- `validate_step` checks everything about a step before any compute touches the cache,
  so a rejected step leaves the session exactly as it was;
- a session remembers who may act on it (`owner`, `upstream`, `ring_source`: authenticated
  peer ids) and `may_step` / `may_control` answer from those alone, never from a message.
No networking and no compute happen here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from swarmllm.protocol import ErrorCode, NextHop, OpenSession, ProtocolError, Step
from swarmllm.protocol.messages import MAX_POSITIONS_PER_STEP, PROTOCOL_VERSION


@dataclass
class ServerSession:
    session_id: str
    start: int                 # first block this session runs here (inclusive)
    end: int                   # last block (exclusive)
    max_length: int
    wire_dtype: str
    next_hop: Optional[NextHop]
    cache: Any                 # engine KV cache for [start, end) x max_length
    reserved_tokens: int       # budget units charged (block-positions, history included)
    history: Any = None        # this server's outputs per position [max_length, hidden]: failover replays them
    client_stream: Any = None  # FrameStream back to the client (errors; results if last)
    push_stream: Any = None    # FrameStream to next_hop, opened lazily
    ring: Any = None           # RingState while this node ends the chain of a ring-decoding session
    ring_stream: Any = None    # FrameStream to the ring's first server (RingTokens), opened lazily
    owner: str = ""            # peer id that opened the session: the only one that may close, reroute, re-upstream it
    upstream: Optional[str] = None  # peer id whose Steps it takes (the previous server); None: the owner's
    report_outputs: bool = False  # every step's output also goes to the client (OpenSession.report_outputs)
    protocol_version: int = PROTOCOL_VERSION  # the version negotiated with the opener: what the session sends
    ring_source: Optional[str] = None  # while a ring runs from this (first) node: the peer its RingTokens come from
    ring_steps: range = range(0)       # ... and the step ids they may carry
    rollbacks: deque = field(default_factory=deque)  # when recent steps rolled the cache back (quotas.py)
    last_step_id: int = -1
    last_active: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    @property
    def cached_positions(self) -> int:
        return self.cache.length

    def may_step(self, sender: str) -> bool:
        """Whether Steps from `sender` are this session's: from its upstream server, or, where
        it has none (the chain's first server), from the peer that opened it."""
        return sender == (self.upstream if self.upstream is not None else self.owner)

    def may_control(self, sender: str) -> bool:
        """Whether `sender` may close, reroute or re-upstream the session, or stop its ring."""
        return sender == self.owner

    def may_ring(self, sender: str, step_id: int) -> bool:
        """Whether a RingToken from `sender` for `step_id` belongs to the ring running from here."""
        return self.ring_source is not None and sender == self.ring_source and step_id in self.ring_steps


class SessionTable:
    """Open sessions of a node and the block-position budget they draw from.

    The budget is counted in block-positions (one position of KV cache in one block), so
    sessions over sub-spans of the node's span are charged only for what they use.
    """

    def __init__(self, span_start: int, span_end: int, hidden_size: int, budget_block_positions: int,
                 max_session_length: int, history_cost_per_position: float = 0.0):
        self.span_start, self.span_end = span_start, span_end
        self.hidden_size = hidden_size
        # Output history kept for failover replays, in block-position units per position.
        self.history_cost_per_position = history_cost_per_position
        self.budget = budget_block_positions
        self.max_session_length = max_session_length
        self.used = 0
        self.sessions: dict[str, ServerSession] = {}

    @property
    def free_tokens(self) -> int:
        """Positions a new session over the whole span could still reserve."""
        per_position = (self.span_end - self.span_start) + self.history_cost_per_position
        return int(max(0, self.budget - self.used) // per_position)

    def check_open(self, msg: OpenSession, model_id: str) -> None:
        if msg.model_id != model_id:
            raise ProtocolError(ErrorCode.BAD_SPAN, f"this node serves model {model_id!r}, not {msg.model_id!r}")
        if not (self.span_start <= msg.start < msg.end <= self.span_end):
            raise ProtocolError(ErrorCode.BAD_SPAN, f"blocks [{msg.start}, {msg.end}) are not inside this node's "
                                                    f"span [{self.span_start}, {self.span_end})")
        if msg.session_id in self.sessions:
            raise ProtocolError(ErrorCode.MALFORMED, f"session {msg.session_id} is already open on this node")
        if msg.max_length > self.max_session_length:
            raise ProtocolError(ErrorCode.TOO_LONG, f"max_length {msg.max_length} exceeds this node's limit of "
                                                    f"{self.max_session_length} positions")
        need = self.cost(msg.max_length, msg.end - msg.start)
        if self.used + need > self.budget:
            free = max(0, self.budget - self.used) // (msg.end - msg.start)
            raise ProtocolError(ErrorCode.OUT_OF_CAPACITY, f"not enough KV-cache memory: the session needs "
                                f"{msg.max_length} positions but only {free} are free; try a shorter max_length "
                                "or another server")

    def cost(self, max_length: int, n_blocks: int) -> int:
        """Budget units a session of max_length positions over n_blocks blocks reserves."""
        return max_length * n_blocks + int(max_length * self.history_cost_per_position + 0.999)

    def add(self, session: ServerSession) -> None:
        self.sessions[session.session_id] = session
        self.used += session.reserved_tokens

    def get(self, session_id: str) -> ServerSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"session {session_id} is not open on this node "
                                                           "(closed, evicted after idling, or never opened)")
        return session

    def remove(self, session_id: str) -> Optional[ServerSession]:
        session = self.sessions.pop(session_id, None)
        if session is not None and not session.closed:
            session.closed = True
            self.used -= session.reserved_tokens
        return session

    def idle_sessions(self, timeout: float, now: Optional[float] = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [sid for sid, s in self.sessions.items() if now - s.last_active > timeout and not s.lock.locked()]

    def validate_step(self, session: ServerSession, msg: Step) -> int:
        """Check a step against its session; returns the number of new positions T."""
        shape = msg.tensor.shape
        if len(shape) != 3 or shape[0] != 1 or shape[2] != self.hidden_size:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"hidden states must have shape [1, T, {self.hidden_size}], "
                                                     f"got {list(shape)}")
        n_new = shape[1]
        if not 1 <= n_new <= MAX_POSITIONS_PER_STEP:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"a step carries 1..{MAX_POSITIONS_PER_STEP} positions, got {n_new}")
        if msg.step_id <= session.last_step_id:
            raise ProtocolError(ErrorCode.STALE_STEP, f"step {msg.step_id} was already applied (last applied step "
                                                      f"is {session.last_step_id}); it is not applied twice")
        if msg.start_position > session.cached_positions:
            raise ProtocolError(ErrorCode.POSITION, f"step starts at position {msg.start_position} but the session "
                                                    f"has only {session.cached_positions} positions cached")
        if msg.start_position + n_new > session.max_length:
            raise ProtocolError(ErrorCode.TOO_LONG, f"positions up to {msg.start_position + n_new} exceed the "
                                                    f"session's max_length of {session.max_length}")
        return n_new
