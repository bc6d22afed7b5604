"""A server's own log of what it computed for whom: hashes and sizes, never content.

One row per step computed (the same step a `StepReceipt` is signed for): when, the requester
(the authenticated peer id that opened the session), the session and step, positions, span,
the sha256 of the input and output tensor bytes and their sizes, and the compute class. So an
operator can show what their node did when a client or gateway disputes a receipt or credits.

Where: `default_work_log_path(peer_id)` = <state folder>/work/<peer id>.sqlite (state.py), or
`swarmllm serve --work-log PATH`. Bounded: rows older than `max_age` seconds (default 30 days)
and all but the newest `max_rows` (default 1,000,000, ~200 MB) are pruned as it writes.
Off the hot path: `record` only queues the row; a thread commits (state.BackgroundWriter), and
when the queue is full rows are dropped and counted, the node keeps serving.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Callable, Optional

from swarmllm.state import BackgroundWriter, open_database, state_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS work (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,             -- unix seconds when the step's output was sent
    requester TEXT NOT NULL,        -- peer id that opened the session (who the work was for)
    session_id TEXT NOT NULL,       -- the session id this server knows it by
    step_id INTEGER NOT NULL,
    start_position INTEGER NOT NULL,
    positions INTEGER NOT NULL,
    span_start INTEGER NOT NULL,
    span_end INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    input_hash BLOB NOT NULL,       -- sha256 of the input tensor's wire bytes
    output_hash BLOB NOT NULL,      -- sha256 of the output tensor's wire bytes
    input_bytes INTEGER NOT NULL,
    output_bytes INTEGER NOT NULL,
    compute_class TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS work_time ON work (time);
CREATE INDEX IF NOT EXISTS work_session ON work (session_id, step_id);
"""
_INSERT = ("INSERT INTO work (time, requester, session_id, step_id, start_position, positions, span_start, span_end, "
           "model_id, input_hash, output_hash, input_bytes, output_bytes, compute_class) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
MAX_ROWS = 1_000_000
MAX_AGE = 30 * 86400.0


@dataclass(frozen=True)
class WorkEntry:
    """One step computed, as logged (the fields of SCHEMA after id)."""

    time: float
    requester: str
    session_id: str
    step_id: int
    start_position: int
    positions: int
    span_start: int
    span_end: int
    model_id: str
    input_hash: bytes
    output_hash: bytes
    input_bytes: int
    output_bytes: int
    compute_class: str


def default_work_log_path(peer_id: str) -> Path:
    return state_dir() / "work" / f"{peer_id}.sqlite"


class WorkLog:
    """The work log of one node (module docstring); `close()` commits what is queued."""

    def __init__(self, path: os.PathLike | str, *, max_rows: int = MAX_ROWS, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.time, interval: float = 1.0):
        if max_rows < 1 or max_age <= 0:
            raise ValueError("a work log keeps at least one row for a positive time")
        self.path, self.max_rows, self.max_age, self.clock = Path(path), max_rows, max_age, clock
        self._writer = BackgroundWriter(open_database(self.path, SCHEMA), interval=interval, maintain=self._prune,
                                        name="swarmllm-work-log")

    @property
    def dropped(self) -> int:
        """Rows lost because the queue was full or the disk refused them."""
        return self._writer.dropped

    def record(self, entry: WorkEntry) -> None:
        self._writer.submit(_INSERT, [astuple(entry)])

    def flush(self, timeout: float = 10.0) -> bool:
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()

    def prune_now(self) -> None:
        """Prune at once (the writer also prunes every few commits)."""
        self.flush()
        with sqlite3.connect(self.path, timeout=10.0) as connection:
            self._prune(connection)

    def _prune(self, connection: sqlite3.Connection) -> None:
        connection.execute("DELETE FROM work WHERE time < ?", (self.clock() - self.max_age,))
        connection.execute("DELETE FROM work WHERE id <= (SELECT MAX(id) FROM work) - ?", (self.max_rows,))


def read_work_log(path: os.PathLike | str, session_id: Optional[str] = None) -> list[WorkEntry]:
    """The rows of a work log, oldest first (one session's with `session_id`)."""
    connection = open_database(path, read_only=True)
    try:
        columns = ", ".join(WorkEntry.__dataclass_fields__)
        if session_id is None:
            rows = connection.execute(f"SELECT {columns} FROM work ORDER BY id").fetchall()
        else:
            rows = connection.execute(f"SELECT {columns} FROM work WHERE session_id = ? ORDER BY id",
                                      (session_id,)).fetchall()
        return [WorkEntry(*row) for row in rows]
    finally:
        connection.close()
