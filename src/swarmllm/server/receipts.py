"""The receipts a node signs for the steps it computes, and the entries of its work log.

After every step it computes, once the output is on its way (pushed on, answered, or sampled in
a ring), the session service asks `ReceiptIssuer.issue` for the step's receipt frame and sends
it to the session's client on the client's own stream (protocol/receipts.py has the format and
what the signature covers). The same step is logged in the node's work log (work_log.py), off
the hot path. A one-token step's receipt costs ~55 us to sign and ~20 us to queue its work-log
row, and the hashes ~1 us per KiB of tensor (benchmarks/results/receipts.md).

It promises: one receipt per computed step, for exactly the bytes the node received and sent
(input_hash over the Step's payload, or for a ring token over its float32 embedding; output_hash
over the payload it sent), signed with the node's identity key. It does no networking.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from swarmllm.protocol.receipts import digest, sign_receipt
from swarmllm.server.work_log import WorkEntry, WorkLog


class ReceiptIssuer:
    """Signs receipts as one node (`sign`: its identity's signing function) and logs the work."""

    def __init__(self, sign: Callable[[bytes], bytes], peer_id: str, work_log: Optional[WorkLog] = None,
                 clock: Callable[[], float] = time.time):
        self.sign, self.peer_id, self.work_log, self.clock = sign, peer_id, work_log, clock
        self.issued = 0

    def issue(self, *, session_id: str, requester: str, step_id: int, start_position: int, positions: int,
              span: tuple[int, int], model_id: str, input_hash: bytes, input_bytes: int,
              output: bytes | memoryview, compute_class: str) -> bytes:
        """The signed receipt frame of one computed step (and its work-log row)."""
        now = self.clock()
        output_hash = digest(output)
        _, frame = sign_receipt(dict(
            session_id=session_id, step_id=step_id, start_position=start_position, positions=positions,
            start=span[0], end=span[1], model_id=model_id, input_hash=input_hash, output_hash=output_hash,
            compute_class=compute_class, peer_id=self.peer_id, time=now), self.sign)
        self.issued += 1
        if self.work_log is not None:
            self.work_log.record(WorkEntry(
                time=now, requester=requester, session_id=session_id, step_id=step_id, start_position=start_position,
                positions=positions, span_start=span[0], span_end=span[1], model_id=model_id, input_hash=input_hash,
                output_hash=output_hash, input_bytes=input_bytes, output_bytes=len(output),
                compute_class=compute_class))
        return frame
