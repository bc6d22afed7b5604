"""The state folder and the SQLite files kept in it (receipts, reputation, work logs).

`state_dir()` is $SWARMLLM_HOME, else $XDG_STATE_HOME/swarmllm, else ~/.local/state/swarmllm:
identities live in its `identities/` (swarm/identity.py), a client's or gateway's receipts in
`receipts.sqlite` (client/receipts.py) and reputation in `reputation.sqlite`
(client/reputation_store.py), a server's work log in `work/<peer id>.sqlite` (server/work_log.py).

`open_database(path)` opens one with the settings they share: the folder made 0700, the file
0600 (receipts say who computed what for whom), WAL journaling with synchronous=NORMAL (a
commit writes the log without an fsync; a crash loses at most the last commits, never the file),
and a busy timeout, so that several processes of one machine can share a file.

`BackgroundWriter` runs the writes of one database on its own thread: `submit(sql, rows)`
queues rows and returns at once (the hot path never waits on the disk), the thread commits
what is queued every `interval` s, and runs `maintain` (pruning) every `maintain_every`
commits. When the queue is full, rows are dropped and counted (`dropped`): a log must never
slow down or stop the work it logs. Standard library only.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence


def state_dir() -> Path:
    home = os.environ.get("SWARMLLM_HOME")
    if home:
        return Path(home).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "swarmllm"


def open_database(path: os.PathLike | str, schema: str = "", read_only: bool = False) -> sqlite3.Connection:
    """A connection to the SQLite file at `path` (created 0600 in a 0700 folder) with `schema` applied."""
    path = Path(path)
    if read_only:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
        connection.row_factory = sqlite3.Row
        return connection
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    connection = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    if schema:
        connection.executescript(schema)
        connection.commit()
    return connection


class BackgroundWriter:
    """Queued writes to one database, committed on a thread of their own (module docstring)."""

    def __init__(self, connection: sqlite3.Connection, *, interval: float = 0.5, max_queued: int = 100_000,
                 maintain: Optional[Callable[[sqlite3.Connection], None]] = None, maintain_every: int = 20,
                 name: str = "swarmllm-sqlite"):
        self.connection, self.interval = connection, interval
        self.maintain, self.maintain_every = maintain, maintain_every
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._flushed = threading.Condition()
        self._submitted = self._committed = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, sql: str, rows: Sequence[tuple]) -> None:
        """Queue `rows` for `sql` (an INSERT with placeholders); never blocks."""
        if self._closed:
            return
        try:
            self._queue.put_nowait((sql, rows))
        except queue.Full:
            self.dropped += len(rows)
            return
        with self._flushed:
            self._submitted += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed; False on timeout."""
        with self._flushed:
            target = self._submitted
            return self._flushed.wait_for(lambda: self._committed >= target or not self._thread.is_alive(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the thread, close the connection."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.connection.close()

    def _run(self) -> None:
        commits = 0
        while True:
            try:
                first = self._queue.get(timeout=self.interval)
            except queue.Empty:
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            items = [item for item in batch if item is not None]
            try:
                for sql, rows in items:
                    self.connection.executemany(sql, rows)
                    self.written += len(rows)
                self.connection.commit()
                commits += 1
                if self.maintain is not None and commits % self.maintain_every == 0:
                    self.maintain(self.connection)
                    self.connection.commit()
            except sqlite3.Error:  # a full disk or a locked file must not kill the process that logs
                self.dropped += sum(len(rows) for _, rows in items)
                try:
                    self.connection.rollback()
                except sqlite3.Error:
                    pass
            with self._flushed:
                self._committed += len(items)
                self._flushed.notify_all()
            if stop:
                return
