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
  opened raises `SwarmUnreachableError` with a sentence, never p2pd's raw text (daemon.py). Every
  stream byte is counted in `traffic` and paced by its caps, shared by all streams (bandwidth.py).
- Reach (reach.py): a node nobody can dial (the probe asks its initial peers to dial back) and
  allowed relays restarts its daemon with a reservation at its relays (default: the initial
  peers) and announces `<relay>/p2p-circuit` addresses (`visible_addresses`, `relayed`); a
  relay-capable node (`Reach.relay_service`: the bootstrap) relays circuits with limits fit for
  inference. `remember_addresses(peer, addrs)` keeps the addresses a verified record gave for a
  peer, and `open_stream` dials them first: that is how a client reaches a relayed server.
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
from swarmllm.swarm.bandwidth import Traffic, chunks  # noqa: E402
from swarmllm.swarm.daemon import explain_daemon_error, stop_daemon  # noqa: E402
from swarmllm.swarm.identity import Identity  # noqa: E402
from swarmllm.swarm import reach as reach_mod  # noqa: E402
from swarmllm.swarm.reach import Reach  # noqa: E402
from hivemind.utils.multiaddr import Multiaddr  # noqa: E402

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_REMEMBERED_PEERS = 4096  # address-book entries (records' addresses), oldest forgotten first
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
    """A bidirectional stream of frames (bytes), safe for one reader and many writers. Every byte passes
    `traffic` (bandwidth.py): counted, and paced in chunks where the node caps a direction."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote_peer_id: str,
                 traffic: Optional[Traffic] = None):
        self._reader, self._writer = reader, writer
        self._write_lock = asyncio.Lock()
        self.remote_peer_id = remote_peer_id
        self.traffic = traffic if traffic is not None else Traffic()
        self.closed = False

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise StreamClosed(f"stream to {self.remote_peer_id} is closed")
        async with self._write_lock:
            try:
                header = len(frame).to_bytes(_LEN_BYTES, P2P.BYTEORDER)
                if self.traffic.upload is None:
                    self.traffic.bytes_sent += _LEN_BYTES + len(frame)
                    self._writer.write(header)
                    self._writer.write(frame)
                    await self._writer.drain()
                    return
                await self.traffic.pace_send(_LEN_BYTES)
                self._writer.write(header)
                view = memoryview(frame)
                for start, end in chunks(len(frame)):
                    await self.traffic.pace_send(end - start)
                    self._writer.write(view[start:end])
                    await self._writer.drain()
            except (ConnectionError, OSError, RuntimeError) as e:
                self.closed = True
                raise StreamClosed(f"stream to {self.remote_peer_id} broke: {e}") from e

    async def recv(self) -> bytes:
        try:
            await self.traffic.pace_recv(_LEN_BYTES)
            header = await self._reader.readexactly(_LEN_BYTES)
            size = int.from_bytes(header, P2P.BYTEORDER)
            if size > MAX_FRAME_BYTES:
                raise StreamClosed(f"peer {self.remote_peer_id} sent a frame of {size} bytes (limit {MAX_FRAME_BYTES})")
            if self.traffic.download is None:
                self.traffic.bytes_received += size
                return await self._reader.readexactly(size)
            parts = []
            for start, end in chunks(size):  # unread bytes stay in the sender's TCP window: that is the cap
                await self.traffic.pace_recv(end - start)
                parts.append(await self._reader.readexactly(end - start))
            return b"".join(parts)
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
                 storage: validation.BoundedStorage, traffic: Optional[Traffic] = None):
        self._p2p, self._dht, self.identity = p2p, dht, identity
        self.traffic = traffic if traffic is not None else Traffic()  # stream bytes and caps (bandwidth.py)
        self.validator, self.storage = validator, storage  # what this node refused, held (tests, logs)
        self.peer_id: str = p2p.peer_id.to_base58()
        self.reachability = "unknown"     # "public", "private" or "unknown" (the probe's verdict)
        self.probe_answers: list = []     # what each asked prober said (True/False/None = no answer)
        self.relays: list[str] = []       # relays this node holds a reservation at (when private)
        self._addresses: dict[str, tuple[str, ...]] = {}  # peer id -> addresses from verified records

    @property
    def relayed(self) -> bool:
        """Reached through a relay: nobody could dial it, and it holds a reservation."""
        return bool(self.relays)

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
        reach: Optional[Reach] = None,
        bandwidth: Optional[Traffic] = None,
    ) -> "SwarmNode":
        """`identity`: the key to run with (default: a new one, forgotten at exit). `known_n_blocks`:
        models whose block count this node's validator enforces (default: the catalog's). `reach`: relaying
        and reachability (reach.py; default: use relays when nobody can dial us, relay for nobody). `bandwidth`: the
        caps on this node's stream traffic and its counters (bandwidth.py; default: no caps)."""
        traffic = bandwidth if bandwidth is not None else Traffic()
        _check_port_free(host, port)
        identity = identity or Identity.generate()
        reach = reach or Reach()
        relays = list(reach.relays) or [peer for peer in initial_peers if "/p2p/" in peer]
        options = dict(initial_peers=list(initial_peers) or None,
                       host_maddrs=[f"/ip4/{host}/tcp/{port}"] if not client_mode else ["/ip4/127.0.0.1/tcp/0"],
                       announce_maddrs=list(announce_addresses) or None)
        private = reach.reachability == "private"
        p2p = await cls._start(identity, reach, private and not client_mode, relays, initial_peers, port, options)
        reachability = reach.reachability if reach.reachability != "auto" else "unknown"
        answers: list = []
        if not client_mode and reach.reachability == "auto" and initial_peers:
            reachability, answers = await _probe(p2p, initial_peers, traffic)
            if reachability == "private" and reach.use_relays and relays:
                # Reserve at the relays: p2pd takes static relays only at start, so it starts again (same key).
                await stop_daemon(p2p, 2.0)
                p2p = await cls._start(identity, reach, True, relays, initial_peers, port, options)
        validator = validation.RecordValidator(catalog_n_blocks() if known_n_blocks is None else known_n_blocks)
        try:
            # A node nobody can dial takes no part in serving the DHT (peers would time out dialling it).
            dht = await DHTNode.create(p2p=p2p, initial_peers=list(initial_peers) or None,
                                       client_mode=client_mode or reachability == "private",
                                       cache_locally=False, cache_on_store=False, wait_timeout=3,
                                       record_validator=validator)
        except BaseException:
            await stop_daemon(p2p, 2.0)
            raise
        node = cls(p2p, dht, identity, validator, validation.install(dht), traffic)
        node.reachability = reachability
        node.probe_answers = answers
        if reachability == "private" and reach.use_relays:
            node.relays = relays
        if not client_mode:
            await node._serve_probes()
        if initial_peers and not await node._has_dht_neighbours():
            await node.shutdown()
            raise SwarmUnreachableError(
                f"none of the initial peers answered: {', '.join(initial_peers)}. Check that the bootstrap "
                "peer is running and that the multiaddr (including /p2p/<peer id>) is exactly what it printed.")
        return node

    @classmethod
    async def _start(cls, identity: Identity, reach: Reach, private: bool, relays: Sequence[str],
                     initial_peers: Sequence[str], port: int, options: dict) -> P2P:
        flags = reach_mod.daemon_flags(reach, private, relays)
        try:
            p2p = await cls._start_daemon(identity, flags, **options)
        except P2PDaemonError as e:
            raise SwarmUnreachableError(explain_daemon_error(str(e), initial_peers=initial_peers, port=port)) from None
        if p2p.peer_id.to_base58() != identity.peer_id:  # would make every record we sign unroutable
            await stop_daemon(p2p, 2.0)
            raise RuntimeError(f"p2pd runs as {p2p.peer_id.to_base58()}, not as its identity {identity.peer_id}")
        return p2p

    @staticmethod
    async def _start_daemon(identity: Identity, flags: dict, **options) -> P2P:
        """p2pd with `identity`'s key (its own file if it has one, else a private temporary copy removed
        once p2pd has read it; no "identity taken" probe: see identity.py) and the extra p2pd `flags`."""
        daemon = _with_flags(flags)
        if identity.path is not None:
            return await daemon.create(identity_path=str(identity.path), check_if_identity_free=False,
                                       startup_timeout=30, **options)
        with tempfile.TemporaryDirectory(prefix="swarmllm-id-") as folder:  # 0700, as mkdtemp makes it
            path = os.path.join(folder, "identity.key")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(identity.to_bytes())
            return await daemon.create(identity_path=path, check_if_identity_free=False, startup_timeout=30,
                                       **options)

    async def _has_dht_neighbours(self) -> bool:
        return any(len(bucket.nodes_to_peer_id) > 0 for bucket in self._dht.protocol.routing_table.buckets)

    async def visible_addresses(self) -> list[str]:
        """Where others dial this node: its listening addresses, then (relayed) its relay circuits."""
        direct = [str(m) for m in await self._p2p.get_visible_maddrs()]
        circuits = [f"{address}/p2p/{self.peer_id}" for address in reach_mod.circuit_addresses(self.relays)]
        return circuits + direct if self.relayed else direct

    # --- reachability ----------------------------------------------------------------
    async def _serve_probes(self) -> None:
        per_peer = reach_mod.ProbeLimiter()
        per_ip = reach_mod.ProbeLimiter(reach_mod.PROBES_PER_IP_PER_MINUTE)

        async def on_probe(stream: "FrameStream") -> None:
            try:
                port = reach_mod.parse_probe_request(await stream.recv())
            except (ValueError, UnicodeDecodeError) as e:
                await stream.send(reach_mod.probe_reply(False, "", f"bad request: {e}"))
                return
            if not per_peer.allow(stream.remote_peer_id):
                await stream.send(reach_mod.probe_reply(False, "", "too many probes; try again in a minute"))
                return
            observed = await self._observed_address(stream.remote_peer_id)
            ip = reach_mod.observed_host(observed or "")
            if ip is None:
                await stream.send(reach_mod.probe_reply(False, observed or "", "no direct connection to dial back"))
                return
            if not per_ip.allow(ip):
                await stream.send(reach_mod.probe_reply(False, observed, "too many probes from this address; "
                                                        "try again in a minute"))
                return
            reachable = await reach_mod.dial_back(ip, port)
            logger.info("reachability probe from %s: dialled %s:%d back (seen at %s): %s", stream.remote_peer_id, ip,
                        port, observed, "reached" if reachable else "unreachable")
            await stream.send(reach_mod.probe_reply(reachable, observed))

        await self.add_stream_handler(reach_mod.REACH_HANDLER, on_probe)

    async def _observed_address(self, peer_id: str) -> Optional[str]:
        """The remote address of our direct connection to `peer_id`, as this node sees it."""
        for info in await self._p2p._client.list_peers():
            if info.peer_id.to_base58() == peer_id:
                direct = [str(a) for a in info.addrs if not reach_mod.is_relayed(str(a))]
                if direct:
                    return direct[0]
        return None

    async def connection_paths(self) -> dict[str, list[str]]:
        """peer id -> the remote addresses of this node's open connections to it (/p2p-circuit: relayed)."""
        return {info.peer_id.to_base58(): [str(a) for a in info.addrs] for info in await self._p2p._client.list_peers()}

    # --- addresses of other peers ----------------------------------------------------
    def remember_addresses(self, peer_id: str, addresses: Iterable[str]) -> bool:
        """Addresses a verified record gave for `peer_id` (hints: the stream authenticates the peer);
        whether they differ from those remembered."""
        addresses = tuple(a for a in addresses if isinstance(a, str) and a.startswith("/"))[:8]
        if not addresses or self._addresses.get(peer_id) == addresses:
            return False
        self._addresses.pop(peer_id, None)
        self._addresses[peer_id] = addresses
        while len(self._addresses) > MAX_REMEMBERED_PEERS:
            del self._addresses[next(iter(self._addresses))]
        return True

    def knows_addresses(self, peer_id: str) -> bool:
        return peer_id in self._addresses

    async def _dial_known(self, peer_id: str) -> None:
        """Give p2pd the remembered addresses of `peer_id` (relay circuits included) before a stream opens."""
        addresses = self._addresses.get(peer_id)
        if not addresses:
            return
        encoded = []
        for address in addresses:
            if address.endswith(f"/p2p/{peer_id}"):
                address = address[:-len(f"/p2p/{peer_id}")]
            try:
                encoded.append(_Encoded(reach_mod.encode_multiaddr(
                    address, lambda part: Multiaddr(part).to_bytes(), lambda p: PeerID.from_base58(p).to_bytes())))
            except (ValueError, TypeError, KeyError) as e:
                logger.debug("skipping address %s of %s: %s", address, peer_id, e)
        if encoded:
            try:
                await self._p2p._client.connect(PeerID.from_base58(peer_id), encoded)
            except (P2PDaemonError, P2PHandlerError, ConnectionError, OSError, ValueError, Exception) as e:
                logger.debug("could not dial %s at its known addresses: %s", peer_id, e)

    # --- DHT -------------------------------------------------------------------------
    async def store_records(self, items: Iterable[tuple[str, BaseModel]], expiration_time: float) -> bool:
        """Sign and store (key, body) items under this node's peer id; True if all were stored somewhere."""
        envelopes = seal_records(self.identity, items, expiration_time)
        if not envelopes:
            return True
        results = await self._dht.store_many([e.key for e in envelopes], [e.to_value() for e in envelopes],
                                             expiration_time, subkeys=[self.peer_id] * len(envelopes))
        return all(results.values())

    async def store_signed(self, envelope: SignedRecord) -> bool:
        """Store an envelope someone else signed (a release: its key is the project's, not ours) as it
        is, under its own key, signer and expiration; True if some DHT node took it."""
        return bool(await self._dht.store(envelope.key, envelope.to_value(), envelope.expiration,
                                          subkey=envelope.peer_id))

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
            stream = FrameStream(reader, writer, info.peer_id.to_base58(), self.traffic)
            try:
                await handler(stream)
            except StreamClosed:
                pass
            except Exception:  # a handler bug must not take the node down
                logger.exception("stream handler %s failed", name)
            finally:
                stream.close()

        await self._p2p.add_binary_stream_handler(name, _on_stream)

    async def remove_stream_handler(self, name: str) -> None:
        await self._p2p.remove_binary_stream_handler(name)

    async def open_stream(self, peer_id: str, name: str, timeout: float = 10.0) -> FrameStream:
        try:
            await asyncio.wait_for(self._dial_known(peer_id), timeout)
        except asyncio.TimeoutError:
            pass  # the stream's own dial says what failed
        try:
            _, reader, writer = await asyncio.wait_for(
                self._p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), name), timeout)
        except asyncio.TimeoutError:
            raise SwarmUnreachableError(f"peer {peer_id} did not open a {name} stream within {timeout:.0f} s: "
                                        "it may be overloaded, frozen or unreachable") from None
        except (P2PHandlerError, P2PDaemonError, ConnectionError, OSError, ValueError) as e:
            text = str(e) or type(e).__name__
            raise SwarmUnreachableError(explain_daemon_error(text, peer=peer_id, handler=name)) from None
        return FrameStream(reader, writer, peer_id, self.traffic)

    async def shutdown(self, timeout: float = 3.0) -> None:
        """Leave the DHT and stop p2pd within about `timeout` s (+ a kill), however the peers
        are doing: a node asked to exit must not wait on a DHT whose peers are gone."""
        try:
            await asyncio.wait_for(self._dht.shutdown(), timeout / 2)
        except Exception as e:  # the daemon goes down next anyway
            logger.warning("DHT shutdown did not finish cleanly: %s", e or type(e).__name__)
        finally:
            await stop_daemon(self._p2p, timeout / 2)


class _Encoded:
    """A multiaddr already in p2pd's binary form (reach.encode_multiaddr), for the control client."""

    def __init__(self, data: bytes):
        self._data = data

    def to_bytes(self) -> bytes:
        return self._data


def _with_flags(flags: dict) -> type[P2P]:
    """hivemind's P2P with extra p2pd command-line flags (it exposes no way to pass them)."""
    if not flags:
        return P2P

    class _P2P(P2P):
        @staticmethod
        def _make_process_args(*args, **kwargs):
            return P2P._make_process_args(*args, **{**kwargs, **flags})

    return _P2P


async def _probe(p2p: P2P, initial_peers: Sequence[str], traffic: Traffic) -> tuple[str, list]:
    """Ask up to PROBE_PEERS initial peers to dial this node back (reach.py): the verdict (public, private
    or unknown) and each prober's answer."""
    port = reach_mod.listen_port([str(m) for m in await p2p.get_visible_maddrs()])
    if port is None:
        return "unknown", []
    peers = list(dict.fromkeys(a.rsplit("/p2p/", 1)[1] for a in initial_peers if "/p2p/" in a))[:reach_mod.PROBE_PEERS]

    async def ask(peer_id: str):
        try:
            _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(peer_id),
                                                                     reach_mod.REACH_HANDLER)
        except Exception:  # an older peer, or unreachable: no answer
            return None
        stream = FrameStream(reader, writer, peer_id, traffic)
        try:
            await stream.send(reach_mod.probe_request(port))
            return reach_mod.parse_probe_reply(await stream.recv())
        except (StreamClosed, ConnectionError, OSError):
            return None
        finally:
            stream.close()

    try:
        answers = await asyncio.wait_for(asyncio.gather(*(ask(p) for p in peers)), reach_mod.PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        return "unknown", []
    result = reach_mod.verdict(answers)
    logger.info("reachability: %s (probers said %s)", result, answers)
    return result, list(answers)
