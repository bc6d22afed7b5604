"""The demand a gateway sees per model, published as a signed DHT record (a claim).

A gateway counts, per catalog model, the requests and tokens it was asked for over its last
`window` seconds and how many of them are waiting or running now, and stores a
`DemandRecord` under `demand_key(model_id)` with subkey = its own peer id (the signer), so a
gateway can only speak for itself and holds one entry per model. Nodes started without
`--model` read these records to decide which model to serve (server/model_choice.py).

What `check_demand_record` refuses (records.check_record calls it for kind "demand"):
- a record whose `gateway_id` is not its signer, or stored under another model's demand key;
- values outside the bounds below (pydantic refuses them when the body is parsed);
- an announcement more than `skew` s in the future.
Passing says only who claims the demand: any peer can run a gateway and inflate it. Readers
bound each gateway's influence (model_choice.aggregate_demand: a cap per gateway, full weight
only for trusted gateways); that policy, not this module, is the defence.

Pure: no I/O, no clock (callers pass `now`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from swarmllm.protocol.envelope import RecordRejected

DEMAND_KEY_PREFIX = "swarmllm.v1.demand."
MAX_REQUESTS_PER_MINUTE = 1e6      # far above what one gateway can admit; a bound, not a belief
MAX_TOKENS_PER_MINUTE = 1e9
MAX_QUEUE_LENGTH = 1_000_000
MAX_DEMAND_WINDOW = 3600.0         # s a gateway may average over
# The same pattern as records.MODEL_ID_PATTERN (records imports this module; a unit test keeps them equal).
_MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"


def demand_key(model_id: str) -> str:
    """Where gateways' demand for `model_id` is stored (one subkey per gateway)."""
    return f"{DEMAND_KEY_PREFIX}{model_id}"


class DemandRecord(BaseModel):
    """One gateway's demand for one model over its last `window` seconds (signed by the gateway)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    gateway_id: str = Field(max_length=128)                 # base58 peer id of the gateway: must be the signer
    model_id: str = Field(pattern=_MODEL_ID)                # the catalog model asked for
    requests_per_minute: float = Field(ge=0, le=MAX_REQUESTS_PER_MINUTE)  # requests received, per minute
    tokens_per_minute: float = Field(ge=0, le=MAX_TOKENS_PER_MINUTE)      # prompt + max new tokens asked, per minute
    queue_length: int = Field(ge=0, le=MAX_QUEUE_LENGTH)    # its requests for the model waiting or running now
    window: float = Field(gt=0, le=MAX_DEMAND_WINDOW)       # s the rates were measured over
    announced_at: float                                     # DHT time of the measurement


def check_demand_record(body: DemandRecord, key: str, subkey: str, *, now: float, skew: float) -> DemandRecord:
    """`body` if it may be stored under (key, subkey); RecordRejected saying why otherwise."""
    if body.gateway_id != subkey:
        raise RecordRejected(f"demand of gateway {body.gateway_id} signed by peer {subkey}")
    if key != demand_key(body.model_id):
        raise RecordRejected(f"demand for {body.model_id} stored under {key!r}")
    if body.announced_at > now + skew:
        raise RecordRejected(f"demand announced {body.announced_at - now:.0f} s in the future")
    return body
