"""Synchronous facade over the swarm for the CLI, the generation loop and the gateway.

`SwarmClient.connect(initial_peers)` joins the DHT as a client (it stores nothing and
needs no reachable address, so it works from behind NAT). It can list models, find and
ping servers, plan a chain and open `RemoteSession`s whose `forward(hidden, position)`
has the same contract as the local engine's forward function.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable, Optional, Sequence

import torch

from swarmllm.client.routing import ChainLink, plan_chain
from swarmllm.client.session import InferenceSession
from swarmllm.protocol import (
    MODEL_REGISTRY_KEY, PING_HANDLER, Ping, Pong, ServerRecord, block_key, decode_frame, encode_frame, parse_records,
)
from swarmllm.swarm import BackgroundLoop, SwarmNode


class RemoteSession:
    """A chain session usable from synchronous code."""

    def __init__(self, client: "SwarmClient", session: InferenceSession):
        self._client, self._session = client, session

    @property
    def chain(self) -> list[ChainLink]:
        return self._session.chain

    @property
    def last_step_seconds(self) -> float:
        return self._session.last_step_seconds

    def forward(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        return self._client.loop.run(self._session.step(hidden, start_position))

    def close(self) -> None:
        self._client.loop.run(self._session.close())

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SwarmClient:
    def __init__(self, loop: BackgroundLoop, swarm: SwarmNode):
        self.loop, self.swarm = loop, swarm
        self.rtts: dict[str, float] = {}

    @classmethod
    def connect(cls, initial_peers: Sequence[str]) -> "SwarmClient":
        loop = BackgroundLoop()
        try:
            swarm = loop.run(SwarmNode.create(initial_peers, client_mode=True))
        except BaseException:
            loop.close()
            raise
        return cls(loop, swarm)

    def close(self) -> None:
        try:
            self.loop.run(self.swarm.shutdown(), timeout=10)
        finally:
            self.loop.close()

    def __enter__(self) -> "SwarmClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- discovery ---------------------------------------------------------------------
    def find_servers(self, model_id: str, n_blocks: int) -> list[ServerRecord]:
        found = self.loop.run(self.swarm.get_records([block_key(model_id, b) for b in range(n_blocks)]))
        return parse_records(found, model_id)

    def list_models(self) -> dict[str, dict]:
        return self.loop.run(self.swarm.get_records([MODEL_REGISTRY_KEY]))[MODEL_REGISTRY_KEY]

    def ping(self, peer_ids: Iterable[str], timeout: float = 3.0) -> dict[str, float]:
        """RTT in seconds per reachable peer (unreachable peers are absent)."""
        async def ping_one(peer_id: str) -> Optional[float]:
            try:
                stream = await self.swarm.open_stream(peer_id, PING_HANDLER, timeout=timeout)
            except ConnectionError:
                return None
            try:
                best = float("inf")
                for nonce in range(3):  # the first round trip includes stream set-up
                    started = time.perf_counter()
                    await stream.send(encode_frame(Ping(nonce=nonce)))
                    reply, _ = await asyncio.wait_for(stream.recv(), timeout), None
                    if isinstance(decode_frame(reply)[0], Pong):
                        best = min(best, time.perf_counter() - started)
                return best if best < float("inf") else None
            except (ConnectionError, asyncio.TimeoutError, ValueError):
                return None
            finally:
                stream.close()

        async def ping_all(ids: list[str]) -> dict[str, float]:
            rtts = await asyncio.gather(*(ping_one(p) for p in ids))
            return {p: r for p, r in zip(ids, rtts) if r is not None}

        measured = self.loop.run(ping_all(list(peer_ids)))
        self.rtts.update(measured)
        return measured

    # --- sessions ----------------------------------------------------------------------
    def plan(self, model_id: str, n_blocks: int, max_length: int = 1, exclude: Iterable[str] = ()) -> list[ChainLink]:
        records = self.find_servers(model_id, n_blocks)
        unknown = [r.peer_id for r in records if r.peer_id not in self.rtts]
        unreachable: set[str] = set()
        if unknown:
            measured = self.ping(unknown)
            unreachable = set(unknown) - set(measured)
        return plan_chain(model_id, n_blocks, records, self.rtts, max_length=max_length,
                          exclude=set(exclude) | unreachable)

    def open_session(self, model_id: str, n_blocks: int, max_length: int, *, wire_dtype: Optional[str] = None,
                     chain: Optional[list[ChainLink]] = None) -> RemoteSession:
        """Open a session over `chain` (default: the best chain now).

        wire_dtype None = lossless for this chain: 16-bit when every server computes in that
        16-bit dtype (its outputs carry no more precision), else float32.
        """
        chain = chain or self.plan(model_id, n_blocks, max_length)
        if wire_dtype is None:
            dtypes = {link.record.compute_dtype for link in chain}
            wire_dtype = dtypes.pop() if len(dtypes) == 1 and dtypes <= {"bfloat16", "float16"} else "float32"
        session = InferenceSession(self.swarm, model_id, chain, max_length, wire_dtype=wire_dtype)
        self.loop.run(session.open())
        return RemoteSession(self, session)
