"""What every swarmllm DHT node accepts from others: signed, valid records, in bounded numbers.

hivemind's DHT stores whatever any peer sends, as many entries as it sends, and returns what
any peer answers. This module closes both ends, on every node (bootstrap, servers, clients,
gateways) through `install(dht_node)`:

- `RecordValidator` (hivemind's `RecordValidatorBase`) runs when a peer asks this node to
  store a value and on every value a peer returns to this node's lookups. It accepts only
  values that pass `protocol.records.check_record` (signature, subkey = signer, span, key,
  n_blocks, clocks, bounds, and for releases a trusted release key: see that module; the keys
  are `trusted_release_signers()`) and whose DHT key hash and expiration time are
  the ones the envelope names and signs. Plain (subkey-less) values are refused: a plain
  value with a far expiration would otherwise shadow a whole key's records. It never raises.
- `BoundedStorage` replaces the node's storage: at most MAX_SUBKEYS_PER_KEY writers under a
  key, MAX_RECORDS_PER_PEER entries per writer (the subkey, which the validator has tied to
  the signer), MAX_STORED_RECORDS in all, MAX_RECORD_BYTES per value. A full node refuses new
  entries (first come, first kept) but always takes the refresh of an entry it holds, so the
  honest nodes already there keep announcing. The cache that peers may write into with
  `in_cache` (swarmllm never asks for it) stores nothing.
Per writer rather than per sending connection: DHT nodes forward other peers' records to
newcomers (hivemind's replication), so the sender of a store is often not the writer.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from typing import Callable, Mapping, Optional

from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DHTLocalStorage
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer, get_dht_time

from swarmllm.protocol.envelope import MAX_RECORD_BYTES
from swarmllm.protocol.releases import parse_release_keys, trusted_signers
from swarmllm.protocol.records import (
    MAX_RECORDS_PER_PEER, MAX_STORED_RECORDS, MAX_SUBKEYS_PER_KEY, RecordRejected, check_record,
)


def trusted_release_signers() -> frozenset[str]:
    """The release keys this process trusts: the project's, plus SWARMLLM_RELEASE_KEYS (hex keys,
    comma- or space-separated) for a private swarm or a test. A bad key there is an error, said."""
    return trusted_signers(parse_release_keys(os.environ.get("SWARMLLM_RELEASE_KEYS", "")))


class RecordValidator(RecordValidatorBase):
    def __init__(self, known_n_blocks: Mapping[str, int], clock: Callable[[], float] = get_dht_time,
                 release_signers: Optional[frozenset[str]] = None):
        self.known_n_blocks, self.clock = dict(known_n_blocks), clock
        self.release_signers = trusted_release_signers() if release_signers is None else release_signers
        self.rejected = 0  # for tests and logs: how many values this node has refused

    def validate(self, record: DHTRecord) -> bool:
        try:
            if len(record.value) > MAX_RECORD_BYTES or len(record.subkey) > 256:
                raise RecordRejected("too large")
            subkey = MSGPackSerializer.loads(record.subkey)
            value = MSGPackSerializer.loads(record.value)
            key = value.get("key") if isinstance(value, dict) else None
            if not isinstance(key, str) or DHTID.generate(source=key).to_bytes() != record.key:
                raise RecordRejected("the envelope names another key than the one it is stored under")
            if value.get("expiration") != record.expiration_time:
                raise RecordRejected("stored with another expiration time than the one it signs")
            check_record(value, key, subkey, now=self.clock(), known_n_blocks=self.known_n_blocks,
                         release_signers=self.release_signers)
            return True
        except Exception:  # RecordRejected, or whatever malformed bytes make the decoder raise
            self.rejected += 1
            return False

    # sign_value / strip_value stay hivemind's identity functions: SwarmNode seals values itself,
    # and readers get the envelope whole so that they can check it again.


class BoundedStorage(DHTLocalStorage):
    """hivemind's local storage with the bounds of the module docstring."""

    def __init__(self, max_per_key: int = MAX_SUBKEYS_PER_KEY, max_per_peer: int = MAX_RECORDS_PER_PEER,
                 max_total: int = MAX_STORED_RECORDS, max_value_bytes: int = MAX_RECORD_BYTES):
        super().__init__()
        self.max_per_key, self.max_per_peer, self.max_total = max_per_key, max_per_peer, max_total
        self.max_value_bytes = max_value_bytes
        self._held: dict[tuple[DHTID, object], float] = {}  # (key, subkey) -> expiration, what is stored
        self._expiry: list[tuple[float, DHTID, str]] = []     # heap of (expiration, key, subkey); stale ones skipped
        self._per_key: Counter = Counter()
        self._per_peer: Counter = Counter()
        self.refused = 0

    def store(self, key: DHTID, value, expiration_time: float, subkey=None) -> bool:
        if subkey is None:
            self.refused += 1
            return False  # swarmllm stores only subkeyed, signed records
        return self.store_subkey(key, subkey, value, expiration_time)

    def store_subkey(self, key: DHTID, subkey, value, expiration_time: float) -> bool:
        if not isinstance(subkey, str) or not isinstance(value, bytes) or len(value) > self.max_value_bytes:
            self.refused += 1
            return False
        self._forget_expired()
        entry = (key, subkey)
        new = entry not in self._held
        if new and (self._per_key[key] >= self.max_per_key or self._per_peer[subkey] >= self.max_per_peer
                    or len(self._held) >= self.max_total):
            self.refused += 1
            return False
        if not super().store_subkey(key, subkey, value, expiration_time):
            return False
        if new:
            self._per_key[key] += 1
            self._per_peer[subkey] += 1
        if expiration_time > self._held.get(entry, float("-inf")):
            self._held[entry] = expiration_time
            heapq.heappush(self._expiry, (expiration_time, key, subkey))
        return True

    def _forget_expired(self) -> None:
        now = get_dht_time()
        while self._expiry and self._expiry[0][0] < now:
            expiration, key, subkey = heapq.heappop(self._expiry)
            if self._held.get((key, subkey)) != expiration:
                continue  # refreshed since: a later heap entry stands for it
            del self._held[(key, subkey)]
            for counter, name in ((self._per_key, key), (self._per_peer, subkey)):
                counter[name] -= 1
                if counter[name] <= 0:
                    del counter[name]

    def held(self, key: DHTID) -> int:
        """Entries held under `key` now."""
        self._forget_expired()
        return self._per_key.get(key, 0)

    def held_by(self, subkey: str) -> int:
        self._forget_expired()
        return self._per_peer.get(subkey, 0)


class NoStorage(DHTLocalStorage):
    """Stores nothing: the cache peers could fill with `in_cache` stores."""

    def store(self, key, value, expiration_time, subkey=None) -> bool:
        return False

    def store_subkey(self, key, subkey, value, expiration_time) -> bool:
        return False


def install(dht: DHTNode) -> BoundedStorage:
    """Put bounded storage and a cache that stores nothing under a running DHTNode (created with a
    RecordValidator). Entries stored while it was joining are kept, within the bounds."""
    protocol = dht.protocol
    old, storage = protocol.storage, BoundedStorage()
    for key, item in list(old.items()):
        if hasattr(item.value, "items"):
            for subkey, (value, expiration) in item.value.items():
                storage.store_subkey(key, subkey, value, expiration)
    protocol.storage, protocol.cache = storage, NoStorage()
    return storage
