"""Checking a session's step receipts as they arrive: who must sign what, and when a step is done.

For every step it sends, a session tells its `ReceiptBook` which servers compute it (`Signer`s,
in chain order: the whole chain, or the replacements during a failover replay), where it starts,
how many positions it has, and the sha256 of the tensor bytes it sent to the first of them when
it knows them. A step is *done* only when its result (hidden states, or a ring's TokenResult)
and a receipt from every signer are in and all of these hold:
- each receipt came on the signer's own stream, is signed by the key of that stream's
  authenticated peer id (protocol/receipts.py), and names the signer's session id, span, compute
  class (as its record announced it), the model, the step's positions;
- the first signer's input hash is the hash of what the client sent (when known);
- each signer's output hash is the next signer's input hash (what A pushed is what B received);
- the result came from the last signer, and its output hash is the hash of the bytes received
  (when there are any: a ring's last server sends a token, not its hidden states).
Then `on_verified` gets the receipts (the session stores them) and the result is delivered.

Anything else is a protocol violation, raised as `ReceiptError` naming the suspects: one peer
when the evidence points at it alone (a bad signature, a receipt on the wrong stream or for the
wrong step, a first input or last output that is not what the client sent or received, a result
from the wrong server, two different receipts for one step), two when two neighbours' hashes
disagree (one of them lies about what passed between them; the client cannot tell which).
A receipt that never comes is reported by the session when the step times out (`missing`).

Receipts for steps the book does not expect (stale retries, other rings) are ignored unread: no
signature is checked before the cheap checks pass, so a flood of junk receipts costs little.
Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from swarmllm.protocol.messages import StepReceipt
from swarmllm.protocol.receipts import ReceiptRejected, verify_receipt

MAX_OPEN_STEPS = 1024  # steps awaiting receipts at once; more (a flood of ring receipts) are not tracked


@dataclass(frozen=True)
class Signer:
    """A server that must sign a step: its peer id, the session id it knows the session by, its span, its class."""

    peer_id: str
    session_id: str
    start: int
    end: int
    compute_class: str = ""  # ComputeClass.key its record announced ("" = not checked)


class ReceiptError(Exception):
    """A step's receipts broke the protocol; `peer_ids` are the suspects (see the module docstring)."""

    def __init__(self, peer_ids: tuple[str, ...], step_id: int, message: str):
        super().__init__(message)
        self.peer_ids, self.step_id, self.message = peer_ids, step_id, message


_NO_RESULT = object()


@dataclass
class _Step:
    step_id: int
    start_position: int
    positions: int
    signers: tuple[Signer, ...]
    input_hash: Optional[bytes]
    deliver: Callable[[object], None]
    receipts: dict[str, StepReceipt] = field(default_factory=dict)
    result: object = _NO_RESULT
    output_hash: Optional[bytes] = None


class ReceiptBook:
    """The receipts of one session's open steps (module docstring)."""

    def __init__(self, model_id: str, on_verified: Callable[[list[StepReceipt]], None] = lambda receipts: None,
                 max_open: int = MAX_OPEN_STEPS):
        self.model_id, self.on_verified, self.max_open = model_id, on_verified, max_open
        # called with (receipts, result) once a step is done, before its result is delivered; may raise ReceiptError
        self.on_done: Optional[Callable[[list[StepReceipt], object], None]] = None
        self._open: dict[int, _Step] = {}
        self.verified_steps = 0

    def expect(self, step_id: int, start_position: int, positions: int, signers: tuple[Signer, ...],
               input_hash: Optional[bytes], deliver: Callable[[object], None]) -> bool:
        """Track a step; `deliver(result)` is called once it is done. False if too many are open."""
        if step_id not in self._open and len(self._open) >= self.max_open:
            return False
        self._open[step_id] = _Step(step_id, start_position, positions, tuple(signers), input_hash, deliver)
        return True

    def expects(self, step_id: int) -> bool:
        return step_id in self._open

    def signers(self, step_id: int) -> list[str]:
        step = self._open.get(step_id)
        return [s.peer_id for s in step.signers] if step is not None else []

    def last_signer(self, step_id: int) -> Optional[str]:
        """Who sends the result of a step the book tracks (its last signer)."""
        step = self._open.get(step_id)
        return step.signers[-1].peer_id if step is not None else None

    def forget(self, step_id: int) -> None:
        self._open.pop(step_id, None)

    def forget_where(self, predicate: Callable[[int], bool]) -> None:
        for step_id in [s for s in self._open if predicate(s)]:
            del self._open[step_id]

    def missing(self, step_id: int) -> tuple[bool, list[str]]:
        """(whether the step's result arrived, the signers whose receipts have not)."""
        step = self._open.get(step_id)
        if step is None:
            return False, []
        return step.result is not _NO_RESULT, [s.peer_id for s in step.signers if s.peer_id not in step.receipts]

    # --- arrivals --------------------------------------------------------------------
    def add_receipt(self, stream_peer: str, receipt: StepReceipt) -> None:
        """A receipt arrived on `stream_peer`'s stream; ReceiptError if it breaks the protocol."""
        step = self._open.get(receipt.step_id)
        if step is None:
            return
        signer = next((s for s in step.signers if s.peer_id == stream_peer), None)
        if signer is None:
            return  # a server of the chain that does not compute this step (e.g. before a replayed gap)
        self._check_fields(step, signer, receipt)
        try:
            verify_receipt(receipt, stream_peer)
        except ReceiptRejected as e:
            raise ReceiptError((stream_peer,), step.step_id, str(e)) from None
        held = step.receipts.get(stream_peer)
        if held is not None and held != receipt:
            raise ReceiptError((stream_peer,), step.step_id, f"peer {stream_peer} signed two different receipts "
                                                             f"for step {step.step_id}")
        if signer is step.signers[0] and step.input_hash is not None and receipt.input_hash != step.input_hash:
            raise ReceiptError((stream_peer,), step.step_id, f"peer {stream_peer}'s receipt of step {step.step_id} "
                                                             "hashes an input other than the one sent to it")
        step.receipts[stream_peer] = receipt
        self._maybe_done(step)

    def add_result(self, step_id: int, sender: str, result: object, output_hash: Optional[bytes]) -> None:
        """A step's result arrived from `sender` (output_hash: sha256 of its tensor bytes, None for a token)."""
        step = self._open.get(step_id)
        if step is None or step.result is not _NO_RESULT:
            return
        last = step.signers[-1].peer_id
        if sender != last:
            raise ReceiptError((sender,), step_id, f"peer {sender} sent the result of step {step_id}, which only "
                                                   f"the chain's last server {last} sends")
        step.result, step.output_hash = result, output_hash
        self._maybe_done(step)

    # --- checks ----------------------------------------------------------------------
    def _check_fields(self, step: _Step, signer: Signer, receipt: StepReceipt) -> None:
        expected = {"session_id": signer.session_id, "start": signer.start, "end": signer.end,
                    "model_id": self.model_id, "start_position": step.start_position, "positions": step.positions,
                    "peer_id": signer.peer_id}
        if signer.compute_class:
            expected["compute_class"] = signer.compute_class
        wrong = [name for name, value in expected.items() if getattr(receipt, name) != value]
        if wrong:
            details = ", ".join(f"{name} {getattr(receipt, name)!r} instead of {expected[name]!r}" for name in wrong)
            raise ReceiptError((signer.peer_id,), step.step_id, f"peer {signer.peer_id}'s receipt of step "
                                                                f"{step.step_id} names {details}")

    def _maybe_done(self, step: _Step) -> None:
        if step.result is _NO_RESULT or len(step.receipts) < len(step.signers):
            return
        chain = [step.receipts[s.peer_id] for s in step.signers]
        for before, after in zip(chain, chain[1:]):
            if before.output_hash != after.input_hash:
                raise ReceiptError((before.peer_id, after.peer_id), step.step_id,
                                   f"the receipts of step {step.step_id} disagree: peer {before.peer_id} says it "
                                   f"sent other bytes than peer {after.peer_id} says it received")
        if step.output_hash is not None and chain[-1].output_hash != step.output_hash:
            raise ReceiptError((chain[-1].peer_id,), step.step_id, f"peer {chain[-1].peer_id}'s receipt of step "
                                                                   f"{step.step_id} hashes an output other than the "
                                                                   "one it sent")
        del self._open[step.step_id]
        self.verified_steps += 1
        self.on_verified(chain)
        if self.on_done is not None:
            self.on_done(chain, step.result)
        step.deliver(step.result)
