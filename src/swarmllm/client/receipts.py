"""The client's (or gateway's) store of verified step receipts, per session: the audit trail.

Every receipt a session verified (receipt_check.py: signed by the server that computed the step,
hashes consistent with what was sent and received) is kept in SQLite at
`default_receipts_path()` = <state folder>/receipts.sqlite (state.py), with the receipt's frame
exactly as signed, so anyone can check it again later (`StoredReceipt.receipt()` decodes it and
`protocol.receipts.verify_receipt` checks it). Credits are paid on these rows (credits.py, credit_ledger.py).
The `verified` column is for the verification modes (sample / strict re-computation): 0 until a
step is confirmed by an independent server, 1 when it was, -1 when it was found wrong.

`ReceiptStore.add(session_id, model_id, receipts)` only queues the rows (state.BackgroundWriter
commits them off the event loop); `sessions()` and `receipts(session)` read what is committed
(`swarmllm audit`). One file may be shared by several processes of one machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from swarmllm.protocol.messages import StepReceipt
from swarmllm.protocol.receipts import decode_receipt, encode_receipt
from swarmllm.state import BackgroundWriter, open_database, state_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,     -- the client's own id of the session (InferenceSession.session_id)
    model_id TEXT NOT NULL,
    started_at REAL NOT NULL         -- unix seconds of its first verified step
);
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (session_id),
    step_id INTEGER NOT NULL,
    peer_id TEXT NOT NULL,           -- the server that signed it (checked against its stream's peer id)
    span_start INTEGER NOT NULL,
    span_end INTEGER NOT NULL,
    start_position INTEGER NOT NULL,
    positions INTEGER NOT NULL,
    input_hash BLOB NOT NULL,
    output_hash BLOB NOT NULL,
    compute_class TEXT NOT NULL,
    server_time REAL NOT NULL,       -- the server's clock when it signed
    received_at REAL NOT NULL,       -- ours when it was verified
    frame BLOB NOT NULL,             -- the receipt as signed (protocol/receipts.py): checkable by anyone
    verified INTEGER NOT NULL DEFAULT 0  -- verification modes: 1 confirmed by an independent server, -1 found wrong
);
CREATE INDEX IF NOT EXISTS receipts_session ON receipts (session_id, step_id);
CREATE INDEX IF NOT EXISTS receipts_peer ON receipts (peer_id);
"""
_INSERT_SESSION = "INSERT OR IGNORE INTO sessions (session_id, model_id, started_at) VALUES (?, ?, ?)"
_INSERT = ("INSERT INTO receipts (session_id, step_id, peer_id, span_start, span_end, start_position, positions, "
           "input_hash, output_hash, compute_class, server_time, received_at, frame) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


_CONFIRM = ("UPDATE receipts SET verified = ? WHERE session_id = ? AND peer_id = ? AND start_position >= ? "
            "AND start_position + positions <= ? AND verified = 0")   # steps inside [first, end)
_REFUTE = ("UPDATE receipts SET verified = ? WHERE session_id = ? AND peer_id = ? AND start_position < ? "
           "AND start_position + positions > ? AND verified = 0")     # steps touching [first, end)


def default_receipts_path() -> Path:
    return state_dir() / "receipts.sqlite"


@dataclass(frozen=True)
class SessionSummary:
    session_id: str
    model_id: str
    started_at: float
    steps: int          # distinct steps with receipts
    receipts: int
    peers: int          # distinct servers that signed
    verified: int       # receipts confirmed by verification (the `verified` column = 1)


@dataclass(frozen=True)
class StoredReceipt:
    session_id: str
    step_id: int
    peer_id: str
    span: tuple[int, int]
    start_position: int
    positions: int
    input_hash: str     # hex
    output_hash: str    # hex
    compute_class: str
    server_time: float
    received_at: float
    verified: int
    frame: bytes

    def receipt(self) -> StepReceipt:
        """The signed receipt itself (check it with protocol.receipts.verify_receipt)."""
        return decode_receipt(self.frame)

    def as_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "frame"}
        out["span"] = list(self.span)
        out["frame"] = self.frame.hex()
        return out


class ReceiptStore:
    """Verified receipts in SQLite (module docstring); `close()` commits what is queued."""

    def __init__(self, path: Optional[os.PathLike | str] = None):
        self.path = Path(path) if path is not None else default_receipts_path()
        self._writer = BackgroundWriter(open_database(self.path, SCHEMA), name="swarmllm-receipts")

    @property
    def dropped(self) -> int:
        return self._writer.dropped

    def add(self, session_id: str, model_id: str, receipts: Iterable[StepReceipt]) -> None:
        now = time.time()
        rows = [(session_id, r.step_id, r.peer_id, r.start, r.end, r.start_position, r.positions, r.input_hash,
                 r.output_hash, r.compute_class, r.time, now, encode_receipt(r)) for r in receipts]
        self._writer.submit(_INSERT_SESSION, [(session_id, model_id, now)])
        self._writer.submit(_INSERT, rows)

    def mark(self, session_id: str, peer_id: str, first: int, end: int, verdict: int) -> None:
        """Verification's verdict on a server's receipts of positions [first, end) of a session: 1 confirmed by an
        independent server, -1 found wrong (only rows not judged yet change)."""
        if verdict > 0:
            self._writer.submit(_CONFIRM, [(verdict, session_id, peer_id, first, end)])
        else:
            self._writer.submit(_REFUTE, [(verdict, session_id, peer_id, end, first)])

    def flush(self, timeout: float = 10.0) -> bool:
        return self._writer.flush(timeout)

    def close(self) -> None:
        self._writer.close()


def _query(path: Optional[os.PathLike | str], sql: str, args: tuple) -> list:
    """Rows of a read-only query on a receipt store ([] if it does not exist)."""
    path = Path(path) if path is not None else default_receipts_path()
    if not path.exists():
        return []
    connection = open_database(path, read_only=True)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def list_sessions(path: Optional[os.PathLike | str] = None, limit: int = 100) -> list[SessionSummary]:
    """The newest `limit` sessions of a receipt store, newest first."""
    rows = _query(path, "SELECT s.session_id, s.model_id, s.started_at, COUNT(DISTINCT r.step_id), COUNT(r.id), "
                        "COUNT(DISTINCT r.peer_id), COALESCE(SUM(r.verified = 1), 0) FROM sessions s "
                        "LEFT JOIN receipts r ON r.session_id = s.session_id GROUP BY s.session_id "
                        "ORDER BY s.started_at DESC LIMIT ?", (limit,))
    return [SessionSummary(*row) for row in rows]


def session_receipts(session_id: str, path: Optional[os.PathLike | str] = None) -> list[StoredReceipt]:
    """One session's receipts in step order, the chain's order within a step (by span)."""
    rows = _query(path, "SELECT session_id, step_id, peer_id, span_start, span_end, start_position, positions, "
                        "input_hash, output_hash, compute_class, server_time, received_at, verified, frame "
                        "FROM receipts WHERE session_id = ? ORDER BY step_id, span_start", (session_id,))
    return [StoredReceipt(r[0], r[1], r[2], (r[3], r[4]), r[5], r[6], bytes(r[7]).hex(), bytes(r[8]).hex(), r[9],
                          r[10], r[11], r[12], bytes(r[13])) for r in rows]
