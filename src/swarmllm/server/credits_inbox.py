"""A node's inbox of credit statements: the `swarmllm.v1.credits` handler and the SQLite it writes.

Gateways push signed `CreditStatement`s (protocol/credits.py) to the nodes they owe. The inbox
keeps a statement only if `open_credit_frame` accepts it: signed by the gateway it names,
addressed to this node, and with a sequence above the last one kept from that gateway (a replay,
or an old statement sent again, is refused). Nothing the stream's peer says is believed beyond the
signature: any peer may deliver a gateway's statement. A refused frame gets `b"refused: ..."` and a
log line; it never stops the node. At most one frame per stream, of at most MAX_FRAME_BYTES.

Statements live in `<state folder>/credits-received.sqlite` (state.py), one file for every
identity of the machine (the `node` column), with the envelope as received, so `swarmllm credits`
can show them and anyone can check them again (cli_credits.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from swarmllm.protocol.credits import MAX_FRAME_BYTES, CreditStatement, open_credit_frame
from swarmllm.protocol.envelope import RecordRejected
from swarmllm.state import open_database, state_dir

logger = logging.getLogger(__name__)
RECEIVE_TIMEOUT = 10.0  # s a pushing peer has to send its frame

SCHEMA = """
CREATE TABLE IF NOT EXISTS statements (
    node TEXT NOT NULL,              -- this machine's node peer id the statement is for
    gateway TEXT NOT NULL,           -- the signer (checked)
    sequence INTEGER NOT NULL,       -- per (gateway, node), increasing
    period_start REAL NOT NULL,
    period_end REAL NOT NULL,
    credits INTEGER NOT NULL,
    receipts INTEGER NOT NULL,
    forfeited_sessions INTEGER NOT NULL,
    received_at REAL NOT NULL,
    envelope TEXT NOT NULL,          -- the signed statement as received (protocol/credits.py envelope_to_json)
    PRIMARY KEY (node, gateway, sequence)
);
"""


def default_inbox_path() -> Path:
    return state_dir() / "credits-received.sqlite"


@dataclass(frozen=True)
class ReceivedStatement:
    statement: CreditStatement
    received_at: float
    envelope: str


class CreditInbox:
    """The statements received for this machine's nodes (module docstring)."""

    def __init__(self, path: Optional[os.PathLike | str] = None):
        self.path = Path(path) if path is not None else default_inbox_path()
        self._connection = open_database(self.path, SCHEMA)
        self._lock = threading.Lock()

    def last_sequence(self, node: str, gateway: str) -> int:
        with self._lock:
            row = self._connection.execute("SELECT MAX(sequence) FROM statements WHERE node = ? AND gateway = ?",
                                           (node, gateway)).fetchone()
        return row[0] or 0

    def accept(self, frame: bytes, node: str, now: float) -> CreditStatement:
        """Check and keep one frame for `node`; RecordRejected saying why it is refused."""
        statement, envelope = open_credit_frame(frame, node, lambda gateway: self.last_sequence(node, gateway))
        s = statement
        with self._lock:
            try:
                self._connection.execute(
                    "INSERT INTO statements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.node, s.gateway, s.sequence, s.period_start, s.period_end, s.credits, s.receipts,
                     s.forfeited_sessions, now, envelope))
                self._connection.commit()
            except sqlite3.IntegrityError:  # the same sequence, concurrently
                raise RecordRejected(f"statement {s.sequence} of gateway {s.gateway} was already received") from None
        return statement

    def totals(self, node: str) -> dict[str, int]:
        """{gateway: credits} of every statement kept for `node` (statements are per period: they add up)."""
        with self._lock:
            rows = self._connection.execute("SELECT gateway, SUM(credits) FROM statements WHERE node = ? "
                                            "GROUP BY gateway ORDER BY gateway", (node,)).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def read_statements(path: Optional[os.PathLike | str] = None) -> list[ReceivedStatement]:
    """Every statement kept (oldest first); [] when there is no inbox."""
    path = Path(path) if path is not None else default_inbox_path()
    if not path.exists():
        return []
    connection = open_database(path, read_only=True)
    try:
        rows = connection.execute("SELECT node, gateway, sequence, period_start, period_end, credits, receipts, "
                                  "forfeited_sessions, received_at, envelope FROM statements "
                                  "ORDER BY period_end, gateway, sequence").fetchall()
    finally:
        connection.close()
    return [ReceivedStatement(CreditStatement(node=r[0], gateway=r[1], sequence=r[2], period_start=r[3],
                                              period_end=r[4], credits=r[5], receipts=r[6], forfeited_sessions=r[7]),
                              r[8], r[9]) for r in rows]


class CreditsHandler:
    """The stream handler: one frame in, one answer out."""

    def __init__(self, inbox: CreditInbox, node: str, clock=None):
        import time
        self.inbox, self.node, self.clock = inbox, node, clock or time.time
        self.accepted = self.refused = 0

    async def serve(self, stream) -> None:
        try:
            frame = await asyncio.wait_for(stream.recv(), RECEIVE_TIMEOUT)
            if len(frame) > MAX_FRAME_BYTES:
                raise RecordRejected(f"a credit frame of {len(frame)} bytes is too large")
            statement = await asyncio.get_running_loop().run_in_executor(
                None, self.inbox.accept, bytes(frame), self.node, self.clock())
        except RecordRejected as e:
            self.refused += 1
            logger.warning("refused a credit statement from peer %s: %s", stream.remote_peer_id, e)
            await stream.send(f"refused: {e}".encode()[:500])
            return
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError, sqlite3.Error) as e:
            self.refused += 1
            logger.info("a credit stream from %s failed: %s", stream.remote_peer_id, e)
            return
        self.accepted += 1
        logger.info("credits: %d from gateway %s (statement %d)", statement.credits, statement.gateway,
                    statement.sequence)
        await stream.send(b"ok")
