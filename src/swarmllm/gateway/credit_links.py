"""Which API keys speak for which nodes: the signed links of `swarmllm credits link`.

The file (`swarmllm gateway --credit-links FILE`, default <state folder>/credit-links.jsonl) holds
one signed `CreditLink` envelope per line (protocol/credits.py), as `swarmllm credits link` prints
and appends it. Every line is checked when the file is read: a link counts only if the node it
names signed it, so nobody can link a node that is not theirs to their key; bad lines are skipped
and logged. A node linked more than once counts for its newest link only. The file is re-read
when it changes (its mtime), at most once a second.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

from swarmllm.protocol.credits import CreditLink, envelope_from_json, verify_credit_link
from swarmllm.protocol.envelope import RecordRejected
from swarmllm.state import state_dir

logger = logging.getLogger(__name__)


def default_links_path() -> Path:
    return state_dir() / "credit-links.jsonl"


def read_links(path: Path) -> dict[str, list[str]]:
    """key digest -> the nodes linked to it (newest link per node wins)."""
    newest: dict[str, CreditLink] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            link = verify_credit_link(envelope_from_json(line))
        except RecordRejected as e:
            logger.warning("%s line %d: a credit link that does not verify (%s); ignored", path, number, e)
            continue
        if link.node not in newest or link.linked_at > newest[link.node].linked_at:
            newest[link.node] = link
    out: dict[str, list[str]] = {}
    for link in newest.values():
        out.setdefault(link.key_digest, []).append(link.node)
    return out


class CreditLinks:
    def __init__(self, path: Optional[os.PathLike | str] = None):
        self.path = Path(path) if path is not None else default_links_path()
        self._mtime: Optional[float] = None
        self._checked = 0.0
        self._links: dict[str, list[str]] = {}

    def nodes_for(self, key_digest: str) -> list[str]:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                mtime = None
            if mtime != self._mtime:
                self._mtime, self._links = mtime, read_links(self.path)
        return self._links.get(key_digest, [])
