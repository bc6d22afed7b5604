"""Reputation kept in SQLite, so that a restart does not forgive a liar.

`SqliteReputationStore(path)` is a `ReputationStore` (reputation.py) over one table of
`PeerRecord`s at `default_reputation_path()` = <state folder>/reputation.sqlite (state.py).
A record is written as soon as it changes (an upsert, committed at once: a ban must survive a
crash right after it; changes are rare next to steps). Several processes of one machine may
share the file; each reads it when it starts (`load_all`), and the last write of a peer wins.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Iterable, Optional

from swarmllm.client.reputation import PeerRecord
from swarmllm.state import open_database, state_dir

_FIELDS = [f.name for f in dataclasses.fields(PeerRecord)]
SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    steps_verified INTEGER NOT NULL,
    mismatches INTEGER NOT NULL,
    timeouts INTEGER NOT NULL,
    clean REAL NOT NULL,            -- decayed counts as of `as_of` (reputation.py)
    bad_mismatches REAL NOT NULL,
    bad_timeouts REAL NOT NULL,
    as_of REAL NOT NULL,
    bans INTEGER NOT NULL,
    banned_until REAL NOT NULL
);
"""
_UPSERT = (f"INSERT INTO peers ({', '.join(_FIELDS)}) VALUES ({', '.join('?' for _ in _FIELDS)}) "
           f"ON CONFLICT (peer_id) DO UPDATE SET "
           + ", ".join(f"{name} = excluded.{name}" for name in _FIELDS[1:]))


def default_reputation_path() -> Path:
    return state_dir() / "reputation.sqlite"


class SqliteReputationStore:
    def __init__(self, path: Optional[os.PathLike | str] = None):
        self.path = Path(path) if path is not None else default_reputation_path()
        self._connection = open_database(self.path, SCHEMA)
        self._lock = threading.Lock()  # the client's loop thread and callers' threads may both write

    def load_all(self) -> Iterable[PeerRecord]:
        with self._lock:
            rows = self._connection.execute(f"SELECT {', '.join(_FIELDS)} FROM peers").fetchall()
        return [PeerRecord(*row) for row in rows]

    def save(self, record: PeerRecord) -> None:
        with self._lock:
            self._connection.execute(_UPSERT, dataclasses.astuple(record))
            self._connection.commit()

    def close(self) -> None:
        with self._lock:
            self._connection.close()
