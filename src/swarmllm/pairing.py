"""Pairing two owners over the swarm: wait with a code (`wait_for_pair`), or join with it (`join_pair`).

What is exchanged, and why it is safe, is protocol/pairing.py's docstring; this module runs it
over a swarm node (swarm/node.py's `SwarmNode`, or anything with the same five members, see
`PairingSwarm`: tests drive it over in-memory streams) and stores the result in a TrustStore.

- `wait_for_pair(swarm, owner, trust, code)`: announces the code's PairingRecord (refreshed
  every REFRESH_SECONDS until it ends), answers PAIR_HANDLER streams one attempt at a time,
  and returns the other owner once one attempt succeeds (the code is then spent: later
  attempts are told so). An attempt that fails (a wrong code, a bad signature, silence for
  STEP_TIMEOUT s) is reported through `on_failure` and counted; after `max_failures` the
  wait ends with PairingError, as it does when the code's lifetime runs out.
- `join_pair(swarm, owner, trust, code)`: looks the code's record up (retrying for up to
  `lookup_timeout` s, since the record may still be on its way), skips records whose tag
  does not match, and runs the exchange with each remaining peer in turn (`join_peer`).
Either side stores the other's owner key only after checking the other's proof; the joining
side stores first (then tells the waiting side), so if the last message is lost it may be
the only one of the two that trusts the other: `PairingResult.confirmed` says so.
How the swarm was joined (initial peers, later LAN discovery or invites) is the caller's.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Protocol, Sequence, TypeVar

from pydantic import BaseModel

from swarmllm.owners import OwnerKey, TrustedOwner, TrustStore
from swarmllm.protocol.envelope import RecordRejected
from swarmllm.protocol.owners import owner_signature_valid
from swarmllm.protocol.pairing import (
    DEFAULT_CODE_LIFETIME, MAX_CODE_LIFETIME, PAIR_HANDLER, PairHello, PairingError, PairingRecord, PairingSecrets,
    PairOutcome, PairProof, decode_message, derive_secrets, encode_message, format_code, mac_matches, new_nonce,
    pairing_key, proof_mac, proof_payload, rendezvous_tag, transcript, transcript_digest,
)
from swarmllm.protocol.records import MAX_RECORD_TTL, check_record

logger = logging.getLogger(__name__)

STEP_TIMEOUT = 20.0      # s the other side may take to send its next message
REFRESH_SECONDS = 5.0    # s between re-announcements of the waiting side's record (it lives MAX_RECORD_TTL)
MAX_CANDIDATES = 4       # peers under one code a joiner tries (only impostors make more than one)
M = TypeVar("M", bound=BaseModel)


class PairingStream(Protocol):
    remote_peer_id: str

    async def send(self, frame: bytes) -> None: ...
    async def recv(self) -> bytes: ...
    def close(self) -> None: ...


class PairingSwarm(Protocol):
    peer_id: str

    async def store_records(self, items: Any, expiration_time: float) -> bool: ...
    async def get_records(self, keys: Sequence[str]) -> dict[str, dict[str, dict]]: ...
    async def add_stream_handler(self, name: str, handler: Callable[[Any], Awaitable[None]]) -> None: ...
    async def open_stream(self, peer_id: str, name: str, timeout: float = 10.0) -> Any: ...


@dataclass(frozen=True)
class PairingResult:
    other: TrustedOwner     # the other side's owner, as now stored in our trust store
    peer_id: str            # the machine we paired with (its authenticated peer id)
    confirmed: bool = True  # the other side said it stored us too


async def _expect(stream: PairingStream, *types: type[M], timeout: float = STEP_TIMEOUT) -> M:
    """The next message, if it is of one of `types`; PairingError for anything else or for silence."""
    try:
        frame = await asyncio.wait_for(stream.recv(), timeout)
    except asyncio.TimeoutError:
        raise PairingError(f"the other machine sent nothing for {timeout:.0f} s") from None
    except ConnectionError:  # StreamClosed: the other side went away
        raise PairingError("the other machine closed the connection") from None
    message = decode_message(frame)
    if not isinstance(message, types):
        raise PairingError(f"the other machine sent a {message.type} message out of turn")
    return message


async def _send(stream: PairingStream, message: BaseModel) -> None:
    try:
        await stream.send(encode_message(message))
    except ConnectionError:
        raise PairingError("the other machine closed the connection") from None


async def _refuse(stream: PairingStream, reason: str) -> None:
    try:
        await stream.send(encode_message(PairOutcome(ok=False, reason=reason)))
    except ConnectionError:
        pass


def _evidence(transcript_bytes: bytes) -> str:
    return "pairing:" + transcript_digest(transcript_bytes)[:32]


# --- the waiting side --------------------------------------------------------------------
class SameOwner(Exception):
    """Both sides hold one owner key: the pairing ends (it is not a guess to count)."""


class _Waiter:
    def __init__(self, swarm: PairingSwarm, owner: OwnerKey, trust: TrustStore, secrets: PairingSecrets, label: str,
                 max_failures: int, on_failure: Optional[Callable[[str, str, int], None]]):
        self.swarm, self.owner, self.trust, self.secrets, self.label = swarm, owner, trust, secrets, label
        self.max_failures, self.on_failure = max_failures, on_failure
        self.failures = 0
        self.lock = asyncio.Lock()  # one attempt at a time: the code is single-use
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(self, stream: PairingStream) -> None:
        async with self.lock:
            if self.result.done():
                await _refuse(stream, "this code has been used or has expired; ask for a new one")
                return
            try:
                trusted, confirmed = await self._attempt(stream)
            except PairingError as e:
                self._failed(stream.remote_peer_id, str(e))
                return
            except Exception as e:  # SameOwner, or the trust store could not be written: the wait ends
                if not self.result.done():
                    self.result.set_exception(PairingError(str(e) if isinstance(e, SameOwner) else
                                                           f"the pairing could not be stored: {e}"))
                return
            if not self.result.done():
                self.result.set_result(PairingResult(trusted, stream.remote_peer_id, confirmed))

    def _failed(self, peer_id: str, reason: str) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure(peer_id, reason, self.failures)
        if self.failures >= self.max_failures and not self.result.done():
            self.result.set_exception(PairingError(
                f"{self.failures} pairing attempts failed (the last: {reason}); stopped waiting so that nobody can "
                "keep guessing. Nothing was stored; run `swarmllm pair` again for a new code"))

    async def _attempt(self, stream: PairingStream) -> tuple[TrustedOwner, bool]:
        theirs = await _expect(stream, PairHello)
        mine = PairHello(owner_key=self.owner.public_key, label=self.label, nonce=new_nonce())
        await _send(stream, mine)
        t = transcript(self.secrets.rendezvous, self.swarm.peer_id, stream.remote_peer_id, mine, theirs)
        proof = await _expect(stream, PairProof)
        if not mac_matches(self.secrets, "join", t, proof.mac):
            await _refuse(stream, "wrong code")
            raise PairingError("wrong code")
        if not owner_signature_valid(theirs.owner_key, proof_payload("join", t), proof.signature):
            await _refuse(stream, "your owner signature does not verify")
            raise PairingError("its owner signature does not verify")
        if theirs.owner_key == self.owner.public_key:
            await _refuse(stream, "both machines have the same owner key; they count as local already")
            raise SameOwner("both machines have the same owner key; they count as local already, no pairing needed")
        await _send(stream, PairProof(mac=proof_mac(self.secrets, "wait", t),
                                      signature=self.owner.sign(proof_payload("wait", t)).hex()))
        outcome = await _expect(stream, PairOutcome)
        if not outcome.ok:
            raise PairingError(f"the other machine refused our proof: {outcome.reason or 'no reason given'}")
        trusted = self.trust.add_trusted(theirs.owner_key, theirs.label, evidence=_evidence(t))
        try:
            await stream.send(encode_message(PairOutcome(ok=True)))
            confirmed = True
        except ConnectionError:
            confirmed = False
        return trusted, confirmed


async def wait_for_pair(swarm: PairingSwarm, owner: OwnerKey, trust: TrustStore, code: str, *, clock: Callable[[], float],
                        label: str = "", lifetime: float = DEFAULT_CODE_LIFETIME, max_failures: int = 3,
                        on_waiting: Optional[Callable[[str], None]] = None,
                        on_failure: Optional[Callable[[str, str, int], None]] = None) -> PairingResult:
    """Wait up to `lifetime` s for a machine that knows `code`; the other owner, stored as trusted.

    on_waiting(formatted code) runs once the record is first stored; on_failure(peer id, reason,
    failures so far) after each failed attempt."""
    if not 0 < lifetime <= MAX_CODE_LIFETIME:
        raise PairingError(f"a pairing code lives between 1 s and {MAX_CODE_LIFETIME:.0f} s")
    secrets = await asyncio.get_running_loop().run_in_executor(None, derive_secrets, code)
    waiter = _Waiter(swarm, owner, trust, secrets, label, max_failures, on_failure)
    await swarm.add_stream_handler(PAIR_HANDLER, waiter.handle)
    expires_at = clock() + lifetime
    key = pairing_key(secrets.rendezvous)
    tag = rendezvous_tag(secrets, swarm.peer_id)
    announced = False
    while not waiter.result.done():
        now = clock()
        if now >= expires_at:
            waiter.result.set_exception(PairingError(
                f"nobody used the code within {lifetime / 60:.0f} min; run `swarmllm pair` again for a new one"))
            break
        record = PairingRecord(peer_id=swarm.peer_id, tag=tag, expires_at=expires_at, announced_at=now)
        try:
            stored = await asyncio.wait_for(
                swarm.store_records([(key, record)], min(now + MAX_RECORD_TTL, expires_at + 1)), REFRESH_SECONDS)
        except (Exception, asyncio.TimeoutError) as e:  # the DHT briefly unreachable: try again
            logger.warning("announcing the pairing record failed: %s", e or type(e).__name__)
            stored = False
        if not stored and not announced:
            logger.warning("the pairing record was not stored on any DHT peer yet; retrying")
        if stored and not announced:
            announced = True
            if on_waiting is not None:
                on_waiting(format_code(code))
        try:
            pause = min(REFRESH_SECONDS if announced else 1.0, max(0.05, expires_at - now))
            await asyncio.wait_for(asyncio.shield(waiter.result), pause)
        except asyncio.TimeoutError:
            pass
        except PairingError:
            break
    return waiter.result.result()


# --- the joining side --------------------------------------------------------------------
async def find_waiting(swarm: PairingSwarm, secrets: PairingSecrets, *, clock: Callable[[], float],
                       lookup_timeout: float = 20.0) -> list[str]:
    """Peer ids waiting under the code whose record is theirs (tag) and still valid; PairingError if none."""
    key = pairing_key(secrets.rendezvous)
    deadline = clock() + lookup_timeout
    while True:
        found = (await swarm.get_records([key])).get(key, {})
        peers = []
        for subkey, value in found.items():
            now = clock()
            try:
                record = check_record(value, key, subkey, now=now)
            except RecordRejected:
                continue
            if isinstance(record, PairingRecord) and record.expires_at > now \
                    and hmac.compare_digest(record.tag, rendezvous_tag(secrets, record.peer_id)):
                peers.append((record.announced_at, record.peer_id))
        if peers:
            return [peer for _, peer in sorted(peers, reverse=True)][:MAX_CANDIDATES]
        if clock() >= deadline:
            raise PairingError("no machine is waiting for this code. Check the code (it works for 5 minutes after "
                               "`swarmllm pair` printed it, once) and that both machines joined the same swarm "
                               "(--initial-peers)")
        await asyncio.sleep(1.0)


async def join_peer(swarm: PairingSwarm, owner: OwnerKey, trust: TrustStore, secrets: PairingSecrets, peer_id: str,
                    *, label: str = "") -> PairingResult:
    """Run the exchange with the waiting machine `peer_id`; the other owner, stored as trusted."""
    stream = await swarm.open_stream(peer_id, PAIR_HANDLER, timeout=STEP_TIMEOUT)
    try:
        mine = PairHello(owner_key=owner.public_key, label=label, nonce=new_nonce())
        await _send(stream, mine)
        theirs = await _expect(stream, PairHello, PairOutcome)
        if isinstance(theirs, PairOutcome):
            raise PairingError(f"the waiting machine refused: {theirs.reason or 'no reason given'}")
        if theirs.owner_key == owner.public_key:
            await _refuse(stream, "both machines have the same owner key")
            raise PairingError("both machines have the same owner key; they count as local already, no pairing needed")
        t = transcript(secrets.rendezvous, peer_id, swarm.peer_id, theirs, mine)
        await _send(stream, PairProof(mac=proof_mac(secrets, "join", t),
                                      signature=owner.sign(proof_payload("join", t)).hex()))
        answer = await _expect(stream, PairProof, PairOutcome)
        if isinstance(answer, PairOutcome):
            raise PairingError(f"the waiting machine refused: {answer.reason or 'no reason given'}; nothing was stored")
        if not mac_matches(secrets, "wait", t, answer.mac) \
                or not owner_signature_valid(theirs.owner_key, proof_payload("wait", t), answer.signature):
            await _refuse(stream, "your proof does not verify")
            raise PairingError("the machine waiting under this code could not prove that it knows the code; "
                               "nothing was stored")
        trusted = trust.add_trusted(theirs.owner_key, theirs.label, evidence=_evidence(t))
        await _send(stream, PairOutcome(ok=True))
        try:
            ack = await _expect(stream, PairOutcome)
            confirmed = ack.ok
        except PairingError:
            confirmed = False
        return PairingResult(trusted, peer_id, confirmed)
    finally:
        stream.close()


async def join_pair(swarm: PairingSwarm, owner: OwnerKey, trust: TrustStore, code: str, *, clock: Callable[[], float],
                    label: str = "", lookup_timeout: float = 20.0) -> PairingResult:
    """Pair with the machine waiting under `code` (module docstring)."""
    secrets = await asyncio.get_running_loop().run_in_executor(None, derive_secrets, code)
    candidates = await find_waiting(swarm, secrets, clock=clock, lookup_timeout=lookup_timeout)
    last: Optional[Exception] = None
    for peer_id in candidates:
        try:
            return await join_peer(swarm, owner, trust, secrets, peer_id, label=label)
        except (PairingError, ConnectionError) as e:  # ConnectionError: SwarmUnreachableError opening the stream
            logger.info("pairing with %s failed: %s", peer_id, e)
            last = e
    raise PairingError(str(last))
