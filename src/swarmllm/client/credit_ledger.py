"""A gateway's credit ledger in SQLite: verified work settled per session, statements issued, spending.

`<state folder>/credits.sqlite` (state.py) beside the gateway's receipts.sqlite (receipts.py):

- `settle(receipts_path, now)`: every session whose newest receipt is older than `quiet` seconds
  (`--credit-quiet`, default 60: sampled verification may still refute a step a little after the
  session ended, and a refutation must come before the pay) is settled once: credits.py's rule
  over its stored receipts gives one row per server (credits, receipts paid, forfeited or not).
  A session is never settled twice, and a settled one is not re-opened.
- `issue(now, sign)`: per node, the rows settled since its last statement, summed into the next
  `CreditStatement` (sequence +1), signed (protocol/credits.py) and kept with `delivered` = 0 until
  the issuer pushed it (credit_issuer.py); `undelivered()` is what to push again.
- `credits_since(nodes, since)`: what nodes earned recently (the free tier, gateway/free_tier.py).
- `record_spending(key_digest, tokens, now)`: tokens a key linked to a node used (docs/free-tier.md).
- Rows older than `retention` (90 days) are pruned at each settle; a node's last sequence is kept
  forever (a small row), so a pruned ledger never reuses a sequence number.

One process writes a ledger (its gateway); calls come from one thread at a time (a lock).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional

from swarmllm.client.credits import ReceiptRow, session_credits
from swarmllm.protocol.credits import CreditStatement, envelope_to_json
from swarmllm.protocol.envelope import SignedRecord
from swarmllm.state import open_database, state_dir

RETENTION = 90 * 86400.0
DEFAULT_QUIET = 60.0
SETTLE_BATCH = 1000  # sessions settled per call at most

SCHEMA = """
CREATE TABLE IF NOT EXISTS settled_sessions (
    session_id TEXT PRIMARY KEY,     -- receipts.sqlite's session id
    settled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS earnings (
    session_id TEXT NOT NULL,
    node TEXT NOT NULL,              -- the server's peer id (as its receipts were signed)
    credits INTEGER NOT NULL,        -- credits.py: positions x blocks of confirmed receipts; 0 if forfeited
    receipts INTEGER NOT NULL,       -- confirmed receipts paid for
    forfeited INTEGER NOT NULL,      -- 1: a refuted receipt in the session, nothing paid
    settled_at REAL NOT NULL,
    PRIMARY KEY (session_id, node)
);
CREATE INDEX IF NOT EXISTS earnings_node ON earnings (node, settled_at);
CREATE TABLE IF NOT EXISTS sequences (
    node TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    last_end REAL NOT NULL           -- the last statement's period end: the next one starts there
);
CREATE TABLE IF NOT EXISTS statements (
    node TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    period_start REAL NOT NULL,
    period_end REAL NOT NULL,
    credits INTEGER NOT NULL,
    receipts INTEGER NOT NULL,
    envelope TEXT NOT NULL,          -- signed (protocol/credits.py envelope_to_json)
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, sequence)
);
CREATE TABLE IF NOT EXISTS spending (
    id INTEGER PRIMARY KEY,
    key_digest TEXT NOT NULL,        -- protocol/credits.api_key_digest of a linked key
    tokens INTEGER NOT NULL,         -- prompt + generated tokens of one request
    at REAL NOT NULL
);
"""


def default_ledger_path() -> Path:
    return state_dir() / "credits.sqlite"


def _receipt_rows(receipts_path: Path, session_id: str) -> list[ReceiptRow]:
    connection = open_database(receipts_path, read_only=True)
    try:
        rows = connection.execute("SELECT peer_id, positions, span_end - span_start, verified FROM receipts "
                                  "WHERE session_id = ?", (session_id,)).fetchall()
    finally:
        connection.close()
    return [ReceiptRow(*row) for row in rows]


class CreditLedger:
    """The gateway's books (module docstring)."""

    def __init__(self, path: Optional[os.PathLike | str] = None, *, quiet: float = DEFAULT_QUIET,
                 retention: float = RETENTION):
        self.path = Path(path) if path is not None else default_ledger_path()
        self.quiet, self.retention = quiet, retention
        self._connection = open_database(self.path, SCHEMA)
        self._lock = threading.Lock()

    def _quiet_sessions(self, receipts_path: Path, now: float) -> list[str]:
        if not receipts_path.exists():
            return []
        connection = open_database(receipts_path, read_only=True)
        try:
            rows = connection.execute("SELECT session_id FROM receipts GROUP BY session_id "
                                      "HAVING MAX(received_at) < ? ORDER BY MAX(received_at)",
                                      (now - self.quiet,)).fetchall()
        finally:
            connection.close()
        with self._lock:
            done = {r[0] for r in self._connection.execute("SELECT session_id FROM settled_sessions")}
        return [r[0] for r in rows if r[0] not in done][:SETTLE_BATCH]

    def settle(self, receipts_path: os.PathLike | str, now: float) -> int:
        """Settle the quiet sessions of a receipt store; how many were settled."""
        receipts_path = Path(receipts_path)
        sessions = self._quiet_sessions(receipts_path, now)
        for session_id in sessions:
            earned = session_credits(_receipt_rows(receipts_path, session_id))
            with self._lock:
                self._connection.execute("INSERT OR IGNORE INTO settled_sessions VALUES (?, ?)", (session_id, now))
                self._connection.executemany(
                    "INSERT OR IGNORE INTO earnings VALUES (?, ?, ?, ?, ?, ?)",
                    [(session_id, e.peer_id, e.credits, e.receipts, int(e.forfeited), now) for e in earned.values()])
                self._connection.commit()
        self._prune(now)
        return len(sessions)

    def _prune(self, now: float) -> None:
        cutoff = now - self.retention
        with self._lock:
            for table, column in (("settled_sessions", "settled_at"), ("earnings", "settled_at"),
                                  ("statements", "period_end"), ("spending", "at")):
                self._connection.execute(f"DELETE FROM {table} WHERE {column} < ?", (cutoff,))
            self._connection.commit()

    def issue(self, gateway: str, now: float, sign: Callable[[CreditStatement], SignedRecord]) -> list[CreditStatement]:
        """Sign one statement per node with rows settled since its last one (module docstring)."""
        issued = []
        with self._lock:
            rows = self._connection.execute(
                "SELECT e.node, SUM(e.credits), SUM(e.receipts), SUM(e.forfeited), COALESCE(s.last_sequence, 0), "
                "COALESCE(s.last_end, 0) FROM earnings e LEFT JOIN sequences s ON s.node = e.node "
                "WHERE e.settled_at > COALESCE(s.last_end, -1) AND e.settled_at <= ? GROUP BY e.node",
                (now,)).fetchall()
            for node, credits, receipts, forfeited, last_sequence, last_end in rows:
                statement = CreditStatement(gateway=gateway, node=node, period_start=last_end, period_end=now,
                                            credits=credits, receipts=receipts, forfeited_sessions=forfeited,
                                            sequence=last_sequence + 1)
                envelope = envelope_to_json(sign(statement))
                self._connection.execute("INSERT INTO statements VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                                         (node, statement.sequence, last_end, now, credits, receipts, envelope))
                self._connection.execute("INSERT INTO sequences VALUES (?, ?, ?) ON CONFLICT (node) DO UPDATE SET "
                                         "last_sequence = excluded.last_sequence, last_end = excluded.last_end",
                                         (node, statement.sequence, now))
                issued.append(statement)
            self._connection.commit()
        return issued

    def undelivered(self) -> list[tuple[str, int, str]]:
        """(node, sequence, envelope JSON) of statements not delivered yet, in sequence order per node."""
        with self._lock:
            return [tuple(r) for r in self._connection.execute(
                "SELECT node, sequence, envelope FROM statements WHERE delivered = 0 ORDER BY node, sequence")]

    def mark_delivered(self, node: str, sequence: int) -> None:
        with self._lock:
            self._connection.execute("UPDATE statements SET delivered = 1 WHERE node = ? AND sequence = ?",
                                     (node, sequence))
            self._connection.commit()

    def earnings(self, node: Optional[str] = None) -> list[dict]:
        """Settled rows (a node's, or all), oldest first: what `swarmllm credits --ledger` prints."""
        sql = "SELECT session_id, node, credits, receipts, forfeited, settled_at FROM earnings"
        with self._lock:
            rows = self._connection.execute(sql + (" WHERE node = ?" if node else "") + " ORDER BY settled_at",
                                            (node,) if node else ()).fetchall()
        return [dict(zip(("session_id", "node", "credits", "receipts", "forfeited", "settled_at"), r)) for r in rows]

    def totals(self, since: float = 0.0) -> dict[str, int]:
        """{node peer id: credits settled since `since`} (forfeited sessions count 0): the dashboard's column."""
        with self._lock:
            rows = self._connection.execute("SELECT node, COALESCE(SUM(credits), 0) FROM earnings WHERE settled_at >= ? "
                                            "GROUP BY node", (since,)).fetchall()
        return {node: int(total) for node, total in rows}

    def credits_since(self, nodes: Iterable[str], since: float) -> int:
        nodes = list(nodes)
        if not nodes:
            return 0
        with self._lock:
            row = self._connection.execute(
                f"SELECT COALESCE(SUM(credits), 0) FROM earnings WHERE settled_at >= ? AND node IN "
                f"({', '.join('?' for _ in nodes)})", (since, *nodes)).fetchone()
        return int(row[0])

    def record_spending(self, key_digest: str, tokens: int, now: float) -> None:
        with self._lock:
            self._connection.execute("INSERT INTO spending (key_digest, tokens, at) VALUES (?, ?, ?)",
                                     (key_digest, tokens, now))
            self._connection.commit()

    def spending(self, key_digest: str, since: float = 0.0) -> int:
        with self._lock:
            row = self._connection.execute("SELECT COALESCE(SUM(tokens), 0) FROM spending WHERE key_digest = ? "
                                           "AND at >= ?", (key_digest, since)).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()
