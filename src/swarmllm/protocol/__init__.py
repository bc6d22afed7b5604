"""Wire messages, DHT record schemas, errors and the protocol version.

This package holds data definitions, their (de)serialisation and the checks every DHT
record must pass (signature, schema, bounds: envelope.py, records.py); no networking, no
compute, no clock. Client and server meet here and nowhere else.
"""

from swarmllm.protocol.errors import ErrorCode, ProtocolError, QuotaError, SwarmError
from swarmllm.protocol.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    FILE_HANDLER,
    MAX_RANGE_BYTES,
    CloseSession,
    ErrorReply,
    Message,
    NextHop,
    OpenSession,
    Ping,
    Pong,
    RangeData,
    ReadRange,
    Reroute,
    RingSampling,
    RingSpec,
    RingStop,
    RingToken,
    TokenResult,
    PING_HANDLER,
    PUSH_HANDLER,
    QuotaInfo,
    SESSION_HANDLER,
    SessionOpened,
    SetUpstream,
    Step,
    StepReceipt,
    StepResult,
    TensorMeta,
    WIRE_DTYPES,
)
from swarmllm.protocol.versions import OUR_RANGE, VersionRange, negotiate
from swarmllm.protocol.codec import decode_frame, encode_frame, encode_tensor, decode_tensor
from swarmllm.protocol.envelope import RecordRejected, SignedRecord, open_envelope, peer_id_from_public_key, seal
from swarmllm.protocol.records import (
    MAX_CLOCK_SKEW, MAX_RECORD_TTL, MODEL_REGISTRY_KEY, ComputeClass, ModelRecord, RecordKind, ServerRecord, ServerState,
    block_key,
    check_record, kind_of, model_registry_key, parse_model_records, parse_records,
)

__all__ = [
    "MIN_PROTOCOL_VERSION", "OUR_RANGE", "PROTOCOL_VERSION", "VersionRange", "negotiate", "WIRE_DTYPES", "ErrorCode", "ProtocolError", "QuotaError", "SwarmError",
    "FILE_HANDLER", "MAX_RANGE_BYTES", "RangeData", "ReadRange",
    "CloseSession", "ErrorReply", "Message", "NextHop", "OpenSession", "Ping", "Pong", "Reroute", "RingSampling", "RingSpec", "RingStop", "RingToken", "TokenResult", "PING_HANDLER", "PUSH_HANDLER", "QuotaInfo",
    "SESSION_HANDLER", "SessionOpened", "SetUpstream", "Step", "StepReceipt",
    "StepResult", "TensorMeta", "decode_frame", "encode_frame", "encode_tensor", "decode_tensor",
    "ModelRecord", "ServerRecord", "parse_model_records", "parse_records", "ServerState", "block_key", "model_registry_key", "MODEL_REGISTRY_KEY",
    "MAX_CLOCK_SKEW", "MAX_RECORD_TTL", "RecordKind", "RecordRejected", "SignedRecord", "check_record", "kind_of",
    "open_envelope", "peer_id_from_public_key", "seal", "ComputeClass",
]
