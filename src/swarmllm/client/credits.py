"""Credit accounting: what a session's verified receipts earn each server. Pure functions, no I/O.

The rule (docs/free-tier.md):
- a receipt earns `positions x blocks` (its step's token positions times its span's length) if
  verification confirmed it (the receipt store's `verified` = 1, client/receipts.py); unchecked
  (0) receipts earn nothing: work nobody re-computed is not paid for;
- a server with any refuted (-1) receipt in a session earns nothing for the whole session (work
  later found wrong earns nothing; its reputation already took the mismatch and the ban when
  verification convicted it, client/verification.py);
- witnesses' re-computations are sessions of their own whose receipts nobody re-checks, so they
  earn nothing either: only verified chain work is paid.

The ledger (credit_ledger.py) feeds rows in and stores what comes out; the issuer signs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

CONFIRMED, UNCHECKED, REFUTED = 1, 0, -1


@dataclass(frozen=True)
class ReceiptRow:
    """What the rule needs of one stored receipt."""

    peer_id: str
    positions: int
    blocks: int       # span end - start
    verified: int     # CONFIRMED, UNCHECKED or REFUTED


@dataclass(frozen=True)
class SessionCredit:
    """One server's earnings in one session."""

    peer_id: str
    credits: int      # positions x blocks over its confirmed receipts; 0 if forfeited
    receipts: int     # confirmed receipts paid for (0 if forfeited)
    forfeited: bool   # a refuted receipt: the whole session earns nothing


def receipt_credits(row: ReceiptRow) -> int:
    return row.positions * row.blocks if row.verified == CONFIRMED else 0


def session_credits(rows: Iterable[ReceiptRow]) -> dict[str, SessionCredit]:
    """Every server's earnings in one session's receipts (the module docstring's rule)."""
    credits: dict[str, int] = {}
    paid: dict[str, int] = {}
    refuted: set[str] = set()
    for row in rows:
        credits.setdefault(row.peer_id, 0)
        paid.setdefault(row.peer_id, 0)
        if row.verified == REFUTED:
            refuted.add(row.peer_id)
        elif row.verified == CONFIRMED:
            credits[row.peer_id] += receipt_credits(row)
            paid[row.peer_id] += 1
    return {peer: SessionCredit(peer, 0 if peer in refuted else credits[peer], 0 if peer in refuted else paid[peer],
                                peer in refuted) for peer in credits}
