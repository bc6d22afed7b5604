"""Verification of a session's servers: each span re-computed by an independent witness.

A session opened with `--verify sample` or `strict` asks every server to report its outputs
(OpenSession.report_outputs); each report must hash to what the server's signed receipt says it
sent, so it is the server's signed word. The `Verifier` keeps those outputs per hop, and so knows
every span's inputs (the previous span's outputs; the client's own for the first span). For each
hop it keeps a `Witness` (witness.py): the same blocks on other peers, of the same compute class
when one exists, fed the same inputs. Checking a hop after a step = bringing its witness up to the
step's end and comparing their outputs position by position (compare.py).

- `strict`: after every step, every hop's witness runs that step (in the session's own chunks:
  byte-identical outputs within a class) and the step's output is handed out only if all agree.
- `sample`: after a step, each hop is checked with its reputation's sampling probability (1 for a
  peer never verified, falling with a clean record, never below 2%, high again after a mismatch:
  reputation.py). A check brings the witness up from wherever it stopped, in merged chunks (a
  fraction of the cost of the decode steps; compared within tolerance), so every position of a
  checked hop is compared, late at worst, not only the sampled ones.

A disagreement is decided by a third computation (a fresh witness excluding both): whoever it
contradicts is convicted (a mismatch on its record and an escalating ban, reputation.py). A
convicted witness is dropped and the session goes on. A convicted chain server is replaced by
failover; if its first wrong output is inside the step just run, the step is retried (the caller
never sees the wrong output); if it is earlier (a sampled check found it late), the session is cut
back to the last chunk boundary before it, every server's cache is rebuilt up to there, and
`Rewind(position)` tells the decoder to regenerate from there (verified_decoding.py): tokens
already streamed from wrong outputs are taken back (GenerationStep.retracted_*). If no third
server exists, or the third agrees with neither, `VerificationError` ends the request: an
unverified output is never handed out as verified.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

import torch

from swarmllm.client.chain import Hop, RemoteStepError
from swarmllm.client.compare import exact_comparison, first_disagreement, tolerance
from swarmllm.client.receipt_check import ReceiptError
from swarmllm.client.witness import Witness
from swarmllm.protocol import ErrorCode, StepReceipt, SwarmError

VERIFY_MODES = ("off", "sample", "strict")
NO_WITNESS_RETRY = 10.0  # s before a sample-mode session looks again for a witness where there was none
WITNESS_ATTEMPTS = 2  # witnesses tried for one check before giving up on it (strict: the request fails)
MAX_JUDGES = 2          # third computations tried on one disagreement before giving up
MAX_PENDING_TAPS = 4096  # reported outputs waiting for their step's receipts; more are dropped (a flood)

# (start, end, peers to exclude, compute class to prefer) -> an opened witness session over [start, end)
WitnessOpener = Callable[[int, int, set, str], Awaitable[object]]


def _chunk_end(chunks: list[int], end: int) -> int:
    """The first chunk boundary at or after `end` (`end` itself if the chunks stop before it)."""
    boundary = 0
    for length in chunks:
        boundary += length
        if boundary >= end:
            return boundary
    return end


class VerificationError(SwarmError):
    """Verification cannot vouch for an output (no independent server, or no majority): the request
    fails rather than hand out an unverified output."""


class Rewind(SwarmError):
    """A liar was caught late: outputs from `position` on were wrong. The session now holds positions
    [0, position), all verified, on honest servers; the decoder must regenerate from there."""

    def __init__(self, position: int, peer_id: str, blocks: tuple[int, int], wrong_from: int):
        super().__init__(f"server {peer_id} returned wrong outputs for blocks [{blocks[0]}, {blocks[1]}) from "
                         f"position {wrong_from} on; replaying from position {position}")
        self.position, self.peer_id, self.blocks, self.wrong_from = position, peer_id, blocks, wrong_from


@dataclass
class VerificationStats:
    mode: str = "off"
    steps_checked: int = 0          # hop-positions compared with a witness
    exact_checks: int = 0           # ... of them bit for bit (same class, same chunks)
    mismatches: int = 0             # disagreements found (decided by a third computation)
    banned: list = field(default_factory=list)       # peers convicted during this session
    banned_at: list = field(default_factory=list)    # ... and the position of the wrong output that convicted each
    unverifiable: list = field(default_factory=list)  # "[start, end) peer": spans no independent server covers
    rewinds: int = 0                # times the session was replayed from an earlier position


def chunk_start(chunks: list[int], position: int) -> int:
    """The start of the committed chunk holding `position` (positions past the end: the end)."""
    total = 0
    for length in chunks:
        if total + length > position:
            return total
        total += length
    return total


class Verifier:
    """The verification of one session (module docstring); `session` is its InferenceSession."""

    def __init__(self, session, mode: str, open_witness: WitnessOpener, reputation,
                 rng: Callable[[], float] = random.random,
                 on_verdict: Callable[[str, int, int, int], None] = lambda peer, first, end, verdict: None):
        if mode not in ("sample", "strict"):
            raise ValueError(f"unknown verification mode {mode!r}; use one of {', '.join(VERIFY_MODES)}")
        self.session, self.mode, self.open_witness = session, mode, open_witness
        self.reputation, self.rng = reputation, rng
        self.on_verdict = on_verdict  # (peer, first, end, 1 | -1): the receipts store marks the server's receipts
        self.stats = VerificationStats(mode=mode)
        self.logs: dict[str, torch.Tensor] = {}        # hop session id -> its outputs [max_length, D]
        self.witnesses: dict[str, Witness] = {}        # hop session id -> its witness
        self._taps: dict[tuple[int, str], tuple[torch.Tensor, bytes]] = {}
        self._no_witness_until: dict[str, float] = {}  # hop session id -> when to look for a witness again
        self._unhelpful: set[str] = set()  # peers whose witness sessions failed: not asked again in this session
        self._in_flight: Optional[tuple[int, int, int, list[int]]] = None  # strict: (step id, start, end, chunks)
        self._early: dict[int, asyncio.Future] = {}  # strict: hop index -> its witness's run of the step in flight

    @property
    def strict(self) -> bool:
        return self.mode == "strict"

    # --- reported outputs ------------------------------------------------------------------
    def tap(self, step_id: int, sender: str, tensor: torch.Tensor, digest: bytes) -> None:
        """A server's reported output of a step (checked against its receipt when the step is done)."""
        if len(self._taps) >= MAX_PENDING_TAPS:
            self._taps.pop(next(iter(self._taps)))
        self._taps[(step_id, sender)] = (tensor, digest)
        if self._in_flight is not None and self._in_flight[0] == step_id:  # strict: the next witness can start
            hops = self.session.hops
            index = next((i for i, hop in enumerate(hops) if hop.peer_id == sender), None)
            if index is not None and index + 1 < len(hops):
                _, start, end, _ = self._in_flight
                self._log(hops[index].session_id)[start:end] = tensor[0]  # provisional: on_step_done checks it
                self._start_early(index + 1)

    def on_step_done(self, receipts: list[StepReceipt], result: object) -> None:
        """Every receipt of a step is in and verified: file each server's output under its hop. The last
        server's output is the step's result; the others' are their reports, which must hash to what
        their receipts say they sent (ReceiptError otherwise: a report is the server's signed word)."""
        for index, receipt in enumerate(receipts):
            report = self._taps.pop((receipt.step_id, receipt.peer_id), None)
            if index == len(receipts) - 1 and isinstance(result, torch.Tensor):
                tensor = result[0]
            elif report is None:
                raise ReceiptError((receipt.peer_id,), receipt.step_id, f"peer {receipt.peer_id} did not report its "
                                                                        f"output of step {receipt.step_id}")
            elif report[1] != receipt.output_hash:
                raise ReceiptError((receipt.peer_id,), receipt.step_id, f"peer {receipt.peer_id} reported an output of "
                                                                        f"step {receipt.step_id} other than the one "
                                                                        "its receipt hashes")
            else:
                tensor = report[0][0]
            self._log(receipt.session_id)[receipt.start_position:receipt.start_position + receipt.positions] = tensor

    def _log(self, hop_session: str) -> torch.Tensor:
        log = self.logs.get(hop_session)
        if log is None:
            log = self.logs[hop_session] = torch.zeros(self.session.max_length, self._hidden_size(), dtype=torch.float32)
        return log

    def _hidden_size(self) -> int:
        inputs = self.session.inputs
        return inputs.shape[1] if inputs is not None else 0

    def _inputs_of(self, index: int) -> torch.Tensor:
        hops = self.session.hops
        return self.session.inputs if index == 0 else self._log(hops[index - 1].session_id)

    async def prepare(self) -> None:
        """At session open: strict opens every server's witness now, so that a span nobody else serves fails
        the request before its first step (VerificationError); sample opens them when first needed."""
        if self.strict:
            for hop in self.session.hops:
                await self._witness_for(hop)

    # --- checking a step ---------------------------------------------------------------------
    async def check_all(self) -> None:
        """Check every hop up to the session's end (sample mode, before the last token is handed out: so a
        finished generation is verified to its end). Rewind or VerificationError as check_step."""
        await self.check_step(self.session.position, 0, list(self.session.chunks), force=True)

    async def check_step(self, start: int, n_new: int, chunks: list[int], force: bool = False) -> None:
        """Check the step just run (positions [start, start + n_new); `chunks`: the session's chunks with
        it committed). Returns if every checked hop agrees; raises RemoteStepError(mismatch) naming a
        liar in this step, Rewind for a liar caught late, VerificationError when it cannot decide."""
        end = start + n_new
        if self._in_flight is None or self._in_flight[1:3] != (start, end):  # (begin_step rewound them already)
            for witness in self.witnesses.values():
                witness.rewind(start)  # a step that starts before a witness's end (a rollback) replaces its positions
        self._in_flight = None
        hops = list(self.session.hops)
        checked = [i for i, hop in enumerate(hops)
                   if force or self.strict or self.rng() < self.reputation.sample_probability(hop.peer_id)]
        results = await asyncio.gather(*(self._check_hop(i, hops[i], end, chunks) for i in checked),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        conviction = next((e for e in errors if isinstance(e, _Convicted)), None)
        if conviction is None:
            raise errors[0]
        await self._act_on(conviction, start, hops)

    # strict: each witness starts as soon as its input is known, in parallel with the server it checks
    def begin_step(self, step_id: int, start: int, n_new: int, chunks: list[int]) -> None:
        """strict, as a step is sent: the first server's witness starts on the same input at once; the
        others start when the previous server's report arrives (`tap`), so a witness runs beside the
        server it checks and the step costs the slower of the two, not their sum."""
        if not self.strict:
            return
        for task in self._early.values():
            task.cancel()
        self._early = {}
        for witness in self.witnesses.values():
            witness.rewind(start)
        self._in_flight = (step_id, start, start + n_new, chunks)
        self._start_early(0)

    def _start_early(self, index: int) -> None:
        hops = self.session.hops
        if self._in_flight is None or index >= len(hops) or index in self._early:
            return
        _, _, end, chunks = self._in_flight
        task = self._early[index] = asyncio.ensure_future(self._sync_once(index, hops[index], end, chunks))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a step that failed never awaits it

    async def _sync_once(self, index: int, hop: Hop, end: int, chunks: list[int]):
        """(witness, first position it ran, its outputs) for hop up to `end`, or None (no witness: sample)."""
        witness = await self._witness_for(hop)
        if witness is None:
            return None
        try:
            first, outputs = await witness.sync(self._inputs_of(index), end, chunks, self._exact_chunks(hop, witness))
        except RemoteStepError:  # the witness's own chain failed beyond its failover: not asked again
            self._unhelpful |= set(witness.peer_ids)
            await self.drop_witness(hop.session_id)
            raise
        return witness, first, outputs

    def _exact_chunks(self, hop: Hop, witness: Witness) -> bool:
        """Whether the witness runs the session's own chunks: in strict mode, and whenever it is of the hop's
        class, so that the two are compared bit for bit (merged chunks round differently: in bfloat16 by
        more than the cross-class tolerance lets a small lie pass)."""
        if witness.exact is None:  # fixed at its first sync: a chunk plan cannot change halfway
            witness.exact = self.strict or tuple(witness.classes) == (hop.link.record.compute_class.key,)
        return witness.exact

    async def _check_hop(self, index: int, hop: Hop, end: int, chunks: list[int]) -> None:
        early = self._early.pop(index, None)
        synced = None
        for attempt in range(WITNESS_ATTEMPTS):
            try:
                synced = await early if early is not None and attempt == 0 else \
                    await self._sync_once(index, hop, end, chunks)
                break
            except RemoteStepError as e:  # another witness
                if attempt == WITNESS_ATTEMPTS - 1:
                    if self.strict:
                        raise VerificationError(f"no independent server re-computed blocks [{hop.link.start}, "
                                                f"{hop.link.end}) of {hop.peer_id}: {e}") from None
                    return  # sample: checked another time
        if synced is None:
            return
        witness, first, outputs = synced
        exact_chunks = self._exact_chunks(hop, witness)
        if first >= end:
            return
        claimed = self._log(hop.session_id)[first:end]
        hop_classes, witness_classes = (hop.link.record.compute_class.key,), witness.classes
        exact = exact_comparison(hop_classes, witness_classes, exact_chunks)
        rel = tolerance(hop_classes, witness_classes, self.session.wire_dtype)
        bad = first_disagreement(claimed, outputs, exact, rel)
        if bad is None:
            self._count(end - first, exact)
            self.on_verdict(hop.peer_id, first, end, 1)
            self.reputation.record_verified(hop.peer_id, end - first)
            for peer in witness.peer_ids:
                self.reputation.record_verified(peer, end - first)
            return
        self.stats.mismatches += 1
        await self._decide(index, hop, witness, first + bad, claimed[bad], outputs[bad], chunks, exact_chunks)

    def _count(self, positions: int, exact: bool) -> None:
        self.stats.steps_checked += positions
        if exact:
            self.stats.exact_checks += positions

    async def _witness_for(self, hop: Hop) -> Optional[Witness]:
        witness = self.witnesses.get(hop.session_id)
        if witness is not None:
            return witness
        if time.monotonic() < self._no_witness_until.get(hop.session_id, 0.0):
            return None  # none a moment ago (sample mode): do not plan again at every step
        start, end = hop.link.start, hop.link.end
        try:
            session = await self.open_witness(start, end, {hop.peer_id, *self._unhelpful},
                                              hop.link.record.compute_class.key)
        except SwarmError as e:
            label = f"[{start}, {end}) {hop.peer_id}"
            if self.strict:
                raise VerificationError(f"strict verification needs a second server for blocks [{start}, {end}) "
                                        f"besides {hop.peer_id}, and none can be used: {e}") from None
            if label not in self.stats.unverifiable:
                self.stats.unverifiable.append(label)
            self._no_witness_until[hop.session_id] = time.monotonic() + NO_WITNESS_RETRY
            return None
        witness = self.witnesses[hop.session_id] = Witness(session, start, end)
        return witness

    async def _decide(self, index: int, hop: Hop, witness: Witness, position: int, claimed: torch.Tensor,
                      witnessed: torch.Tensor, chunks: list[int], exact_chunks: bool) -> None:
        """The hop and its witness disagree at `position`: a third computation (from position 0, in the chunks the
        check ran: the session's own when `exact_chunks`, then bit for bit within one class) decides; if it agrees
        with neither, one more (a second liar may be among them). Raises
        _Convicted for the hop, drops a convicted witness, VerificationError if nobody can decide."""
        start, end = hop.link.start, hop.link.end
        hop_classes = (hop.link.record.compute_class.key,)
        exclude = {hop.peer_id, *witness.peer_ids, *self._unhelpful}
        judges: list[str] = []
        for _ in range(MAX_JUDGES):
            try:
                judge = Witness(await self.open_witness(start, end, exclude, hop_classes[0]), start, end)
            except SwarmError as e:
                raise VerificationError(f"server {hop.peer_id} and witness {', '.join(witness.peer_ids)} disagree "
                                        f"about blocks [{start}, {end}) at position {position}, and no other "
                                        f"server can decide{' but ' + ', '.join(judges) if judges else ''}: {e}"
                                        ) from None
            try:
                _, outputs = await judge.sync(self._inputs_of(index), _chunk_end(chunks, position + 1), chunks,
                                              exact=exact_chunks)
            except RemoteStepError:  # the judge's chain failed: another judge
                exclude |= set(judge.peer_ids)
                continue
            finally:
                await judge.close()
            verdict = outputs[position][None]
            wire = self.session.wire_dtype
            hop_right = first_disagreement(claimed[None], verdict,
                                           exact_comparison(hop_classes, judge.classes, exact_chunks),
                                           tolerance(hop_classes, judge.classes, wire)) is None
            witness_right = first_disagreement(witnessed[None], verdict,
                                               exact_comparison(witness.classes, judge.classes, exact_chunks),
                                               tolerance(witness.classes, judge.classes, wire)) is None
            if witness_right and not hop_right:
                self._convict(hop.peer_id, position)
                self.on_verdict(hop.peer_id, position, position + 1, -1)
                raise _Convicted(hop, position)
            if hop_right and not witness_right:
                for peer in witness.peer_ids if len(witness.peer_ids) == 1 else ():  # several: cannot tell which
                    self._convict(peer, position)
                await self.drop_witness(hop.session_id)
                self._count(1, False)
                return
            judges.append(", ".join(judge.peer_ids))
            exclude |= set(judge.peer_ids)
        raise VerificationError(f"blocks [{start}, {end}) at position {position}: server {hop.peer_id}, witness "
                                f"{', '.join(witness.peer_ids)} and judges {'; '.join(judges)} give no majority")

    def convict_ring_token(self, hop: Hop, position: int) -> None:
        """A ring's last server sent a token its own reported hidden states do not give (ring.py)."""
        self.stats.mismatches += 1
        self._convict(hop.peer_id, position)

    def _convict(self, peer_id: str, position: int) -> None:
        self.reputation.record_mismatch(peer_id)
        self.reputation.ban(peer_id)
        if peer_id not in self.stats.banned:
            self.stats.banned.append(peer_id)
            self.stats.banned_at.append(position)

    async def _act_on(self, conviction: "_Convicted", start: int, hops: list[Hop]) -> None:
        """A chain server lied at conviction.position: retry the step, or cut back and rewind."""
        hop, position = conviction.hop, conviction.position
        error = RemoteStepError(hop.peer_id, ErrorCode.MISMATCH, f"its output for blocks [{hop.link.start}, "
                                                                 f"{hop.link.end}) at position {position} disagrees "
                                                                 "with two independent servers")
        await self.drop_witness(hop.session_id)
        if position >= start:
            raise error  # within the step just run: failover replaces the liar and the step is retried
        back_to = chunk_start(self.session.chunks, position)
        self.session.truncate(back_to)
        for witness in self.witnesses.values():
            witness.rewind(back_to)
        failed_at = await self.session.recover(error, 0, None)
        self.session.failover.finished(failed_at)
        self.stats.rewinds += 1
        raise Rewind(back_to, hop.peer_id, (hop.link.start, hop.link.end), position)

    async def drop_witness(self, hop_session: str) -> None:
        witness = self.witnesses.pop(hop_session, None)
        if witness is not None:
            await witness.close()

    async def hops_replaced(self, old: list[Hop]) -> None:
        """Failover replaced these hops: their witnesses and outputs go."""
        for hop in old:
            self.logs.pop(hop.session_id, None)
            await self.drop_witness(hop.session_id)

    async def close(self) -> None:
        for task in self._early.values():
            task.cancel()
        for key in list(self.witnesses):
            await self.drop_witness(key)


class _Convicted(Exception):
    def __init__(self, hop: Hop, position: int):
        super().__init__(f"{hop.peer_id} convicted at position {position}")
        self.hop, self.position = hop, position
