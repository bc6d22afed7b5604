"""`SwarmNode`: one peer of the swarm (libp2p daemon + Kademlia DHT), via hivemind.

What it promises:
- `create()` starts a p2pd daemon and a DHT node in the caller's event loop and joins the
  swarm through `initial_peers`; if none of them answers it raises `SwarmUnreachableError`
  with a sentence saying what to check. A port already in use is reported the same way.
- The node runs with one `Identity` (identity.py): p2pd's key is the key that signs its
  records, so its records' subkey is the peer id its streams are authenticated as (checked
  at start). Without one it makes a throwaway identity (clients, gateways).
- `store_records` signs (key, body) items into envelopes (protocol/envelope.py, one
  signature per distinct body) stored under this node's peer id; `get_records` fetches the
  raw values, for `protocol.parse_records` / `parse_model_records` to verify again.
- Every value another peer stores here or returns to a lookup passes the record validator,
  and what this node stores for others is bounded (validation.py).
- `add_stream_handler` / `open_stream` give length-prefixed `FrameStream`s over
  Noise-encrypted libp2p streams, with a hard cap on frame size; a stream that cannot be
  opened raises `SwarmUnreachableError` with a sentence, never p2pd's raw text (daemon.py).
- `shutdown()` takes a few seconds at most, even when every DHT peer is gone; p2pd dies with
  this process, even on SIGKILL (Linux; daemon.py).
It knows nothing about models or sessions; of the schemas, only that values are signed records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from typing import Awaitable, Callable, Iterable, Mapping, Optional, Sequence

os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")

from swarmllm.swarm import hivemind_core  # noqa: E402,F401  (first: hivemind without its __init__)
from hivemind.dht.node import DHTNode  # noqa: E402
from hivemind.p2p import P2P, PeerID  # noqa: E402
from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError, P2PHandlerError  # noqa: E402
from hivemind.utils import get_dht_time  # noqa: E402

from pydantic import BaseModel  # noqa: E402

from swarmllm.protocol.envelope import SignedRecord, seal, with_key  # noqa: E402
from swarmllm.protocol.records import kind_of  # noqa: E402
from swarmllm.swarm import validation  # noqa: E402
from swarmllm.swarm.daemon import explain_daemon_error, stop_daemon  # noqa: E402
from swarmllm.swarm.identity import Identity  # noqa: E402

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024 * 1024
_LEN_BYTES = P2P.HEADER_LEN  # hivemind's 8-byte big-endian length prefix


def seal_records(identity: Identity, items: Iterable[tuple[str, BaseModel]],
                 expiration_time: float) -> list[SignedRecord]:
    """(key, body) items as envelopes signed by `identity`, one signature per distinct body."""
    sealed: dict[bytes, SignedRecord] = {}
    envelopes = []
    for key, body in items:
        data = body.model_dump_json().encode()
        if data not in sealed:
            sealed[data] = seal(kind_of(body).value, data, key=key, expiration=expiration_time,
                                public_key=identity.public_key, sign=identity.sign)
        envelopes.append(with_key(sealed[data], key))
    return envelopes


def catalog_n_blocks() -> dict[str, int]:
    """The block count of every catalog model: records that claim another one are refused."""
    from swarmllm.models.catalog import CATALOG

    return {name: entry.n_blocks for name, entry in CATALOG.items()}


def dht_time() -> float:
    """The clock DHT expirations are measured on."""
    return get_dht_time()


class SwarmUnreachableError(ConnectionError):
    """The swarm could not be joined or a peer could not be reached."""


class StreamClosed(ConnectionError):
    """The other side closed the stream or went away."""


class FrameStream:
    """A bidirectional stream of frames (bytes), safe for one reader and many writers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote_peer_id: str):
        self._reader, self._writer = reader, writer
        self._write_lock = asyncio.Lock()
        self.remote_peer_id = remote_peer_id
        self.closed = False

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise StreamClosed(f"stream to {self.remote_peer_id} is closed")
        async with self._write_lock:
            try:
                self._writer.write(len(frame).to_bytes(_LEN_BYTES, P2P.BYTEORDER))
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError, RuntimeError) as e:
                self.closed = True
                raise StreamClosed(f"stream to {self.remote_peer_id} broke: {e}") from e

    async def recv(self) -> bytes:
        try:
            header = await self._reader.readexactly(_LEN_BYTES)
            size = int.from_bytes(header, P2P.BYTEORDER)
            if size > MAX_FRAME_BYTES:
                raise StreamClosed(f"peer {self.remote_peer_id} sent a frame of {size} bytes (limit {MAX_FRAME_BYTES})")
            return await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self.closed = True
            raise StreamClosed(f"stream from {self.remote_peer_id} closed") from e

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._writer.close()
            except (ConnectionError, OSError, RuntimeError):
                pass


StreamHandler = Callable[[FrameStream], Awaitable[None]]


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise SwarmUnreachableError(
                f"port {port} on {host} is already in use ({e.strerror}); stop whatever holds it or pass another --port"
            ) from None


class SwarmNode:
    """A peer of the swarm. Create with `await SwarmNode.create(...)`; one per process."""

    def __init__(self, p2p: P2P, dht: DHTNode, identity: Identity, validator: validation.RecordValidator,
                 storage: validation.BoundedStorage):
        self._p2p, self._dht, self.identity = p2p, dht, identity
        self.validator, self.storage = validator, storage  # what this node refused, held (tests, logs)
        self.peer_id: str = p2p.peer_id.to_base58()

    @classmethod
    async def create(
        cls,
        initial_peers: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        announce_addresses: Sequence[str] = (),
        client_mode: bool = False,
        identity: Optional[Identity] = None,
        known_n_blocks: Optional[Mapping[str, int]] = None,
    ) -> "SwarmNode":
        """`identity`: the key to run with (default: a new one, forgotten at exit). `known_n_blocks`:
        models whose block count this node's validator enforces (default: the catalog's)."""
        _check_port_free(host, port)
        identity = identity or Identity.generate()
        host_maddrs = [] if client_mode else [f"/ip4/{host}/tcp/{port}"]
        try:
            p2p = await cls._start_daemon(identity, initial_peers=list(initial_peers) or None,
                                          host_maddrs=host_maddrs or ["/ip4/127.0.0.1/tcp/0"],
                                          announce_maddrs=list(announce_addresses) or None)
        except P2PDaemonError as e:
            raise SwarmUnreachableError(explain_daemon_error(str(e), initial_peers=initial_peers, port=port)) from None
        if p2p.peer_id.to_base58() != identity.peer_id:  # would make every record we sign unroutable
            await stop_daemon(p2p, 2.0)
            raise RuntimeError(f"p2pd runs as {p2p.peer_id.to_base58()}, not as its identity {identity.peer_id}")
        validator = validation.RecordValidator(catalog_n_blocks() if known_n_blocks is None else known_n_blocks)
        try:
            dht = await DHTNode.create(p2p=p2p, initial_peers=list(initial_peers) or None, client_mode=client_mode,
                                       cache_locally=False, cache_on_store=False, wait_timeout=3,
                                       record_validator=validator)
        except BaseException:
            await stop_daemon(p2p, 2.0)
            raise
        node = cls(p2p, dht, identity, validator, validation.install(dht))
        if initial_peers and not await node._has_dht_neighbours():
            await node.shutdown()
            raise SwarmUnreachableError(
                f"none of the initial peers answered: {', '.join(initial_peers)}. Check that the bootstrap "
                "peer is running and that the multiaddr (including /p2p/<peer id>) is exactly what it printed.")
        return node

    @staticmethod
    async def _start_daemon(identity: Identity, **options) -> P2P:
        """p2pd with `identity`'s key: its own file if it has one, else a private temporary copy
        that is removed once p2pd has read it. (No "identity taken" probe: see identity.py.)"""
        if identity.path is not None:
            return await P2P.create(identity_path=str(identity.path), check_if_identity_free=False,
                                    startup_timeout=30, **options)
        with tempfile.TemporaryDirectory(prefix="swarmllm-id-") as folder:  # 0700, as mkdtemp makes it
            path = os.path.join(folder, "identity.key")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(identity.to_bytes())
            return await P2P.create(identity_path=path, check_if_identity_free=False, startup_timeout=30, **options)

    async def _has_dht_neighbours(self) -> bool:
        return any(len(bucket.nodes_to_peer_id) > 0 for bucket in self._dht.protocol.routing_table.buckets)

    async def visible_addresses(self) -> list[str]:
        return [str(m) for m in await self._p2p.get_visible_maddrs()]

    # --- DHT -------------------------------------------------------------------------
    async def store_records(self, items: Iterable[tuple[str, BaseModel]], expiration_time: float) -> bool:
        """Sign and store (key, body) items under this node's peer id; True if all were stored somewhere."""
        envelopes = seal_records(self.identity, items, expiration_time)
        if not envelopes:
            return True
        results = await self._dht.store_many([e.key for e in envelopes], [e.to_value() for e in envelopes],
                                             expiration_time, subkeys=[self.peer_id] * len(envelopes))
        return all(results.values())

    async def get_records(self, keys: Sequence[str]) -> dict[str, dict[str, dict]]:
        """For each key, {subkey: value} of unexpired entries (empty if none). The values passed this
        node's validator; readers still verify them (protocol.parse_records) with what they know."""
        found = await self._dht.get_many(list(keys), sufficient_expiration_time=float("inf"))
        out: dict[str, dict[str, dict]] = {}
        for key in keys:
            entry = found.get(key)
            subs = entry.value if entry is not None and isinstance(entry.value, dict) else {}
            out[key] = {str(sk): v.value for sk, v in subs.items() if isinstance(v.value, dict)}
        return out

    # --- streams ---------------------------------------------------------------------
    async def add_stream_handler(self, name: str, handler: StreamHandler) -> None:
        async def _on_stream(info, reader, writer) -> None:
            stream = FrameStream(reader, writer, info.peer_id.to_base58())
            try:
                await handler(stream)
            except StreamClosed:
                pass
            except Exception:  # a handler bug must not take the node down
                logger.exception("stream handler %s failed", name)
            finally:
                stream.close()

        await self._p2p.add_binary_stream_handler(name, _on_stream)

    async def open_stream(self, peer_id: str, name: str, timeout: float = 10.0) -> FrameStream:
        try:
            _, reader, writer = await asyncio.wait_for(
                self._p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), name), timeout)
        except asyncio.TimeoutError:
            raise SwarmUnreachableError(f"peer {peer_id} did not open a {name} stream within {timeout:.0f} s: "
                                        "it may be overloaded, frozen or unreachable") from None
        except (P2PHandlerError, P2PDaemonError, ConnectionError, OSError, ValueError) as e:
            text = str(e) or type(e).__name__
            raise SwarmUnreachableError(explain_daemon_error(text, peer=peer_id, handler=name)) from None
        return FrameStream(reader, writer, peer_id)

    async def shutdown(self, timeout: float = 3.0) -> None:
        """Leave the DHT and stop p2pd within about `timeout` s (+ a kill), however the peers
        are doing: a node asked to exit must not wait on a DHT whose peers are gone."""
        try:
            await asyncio.wait_for(self._dht.shutdown(), timeout / 2)
        except Exception as e:  # the daemon goes down next anyway
            logger.warning("DHT shutdown did not finish cleanly: %s", e or type(e).__name__)
        finally:
            await stop_daemon(self._p2p, timeout / 2)
