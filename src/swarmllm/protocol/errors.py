"""Errors that cross the wire or reach a user.

Every error a node sends carries a stable `ErrorCode` (so a client can decide whether to
retry elsewhere) and a sentence a person can act on. Nothing here raises on its own.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Why a request failed. Clients branch on these, so values never change meaning."""

    MALFORMED = "malformed"                    # frame or header could not be parsed
    VERSION_MISMATCH = "version_mismatch"      # peer speaks another protocol version
    UNKNOWN_SESSION = "unknown_session"        # session id not open on this node (closed, evicted)
    BAD_SPAN = "bad_span"                      # requested blocks not hosted by this node
    BAD_SHAPE = "bad_shape"                    # tensor shape/dtype/size does not fit the session
    POSITION = "position"                      # step does not continue the session's positions
    STALE_STEP = "stale_step"                  # step id already applied (duplicate or replay)
    OUT_OF_CAPACITY = "out_of_capacity"        # not enough KV-cache room for max_length
    TOO_LONG = "too_long"                      # positions would exceed the session's max_length
    DOWNSTREAM = "downstream"                  # the next server of the chain failed or is unreachable
    SHUTTING_DOWN = "shutting_down"            # node is leaving; open the session elsewhere
    NOT_AVAILABLE = "not_available"            # the node does not hold the requested file bytes
    UNSUPPORTED = "unsupported"                # the node cannot do what was asked (e.g. ring decoding without head weights)
    FORBIDDEN = "forbidden"                    # the sender may not do this to the session (not its opener, not its
    # upstream server, not the ring's last server): session ids are never enough alone
    OVER_QUOTA = "over_quota"                  # the peer is over one of the node's per-peer limits (ErrorReply.quota
    # says which, its value and when to retry); others are still served
    INTERNAL = "internal"                      # bug on the node; the session is still valid
    # Raised by the client about a server, never sent by one:
    UNREACHABLE = "unreachable"                # no stream could be opened to the server
    TIMEOUT = "timeout"                        # no answer within the step's timeout
    CONNECTION_LOST = "connection_lost"        # the stream to the server broke
    CLOSED = "closed"                          # the session was closed by this client meanwhile
    BAD_RECEIPT = "bad_receipt"                # a step's receipt is missing, forged, or does not match the bytes
    # sent and received or the neighbouring servers' receipts: a protocol violation, the server is routed around
    MISMATCH = "mismatch"                      # the server's output disagrees with two independent servers' for the
    # same inputs (client/verification.py): it is banned and replaced
    UNKNOWN = "unknown"                        # an error code this version does not know (a newer or odd peer)

    @classmethod
    def parse(cls, text: str) -> "ErrorCode":
        """The code named by a peer's ErrorReply; UNKNOWN for values this version does not define."""
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


class SwarmError(Exception):
    """Base class of errors a swarmllm user can meet; `str()` is a clear sentence."""


class ProtocolError(SwarmError):
    """A message broke the protocol; carries the code to send back."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class QuotaError(ProtocolError):
    """A peer went over one of a node's per-peer quotas: code OVER_QUOTA, plus which limit
    (`limit`), its value and the seconds after which the same request may pass (None: never
    at this size); handlers put these in `ErrorReply.quota`."""

    def __init__(self, limit: str, value: float, retry_after: float | None, message: str):
        super().__init__(ErrorCode.OVER_QUOTA, message)
        self.limit, self.value, self.retry_after = limit, value, retry_after
