"""The gateway's credit issuer: settle verified work, sign statements, push them to the nodes.

Every `period` seconds (`swarmllm gateway --credit-period`, 0 = off) it settles the receipt
store's quiet sessions into the ledger (credit_ledger.py), signs one `CreditStatement` per node
that earned (or forfeited) something since its last one with the gateway's own persistent key
(`<state folder>/identities/gateway.key`: a node's statements from one gateway must come from one
peer id across restarts), and pushes every undelivered statement to its node over the
`swarmllm.v1.credits` stream (server/credits_inbox.py). A node that cannot be reached gets its
statements at a later period, in sequence order (a node refuses a sequence below one it has, so
a later one is never sent before an earlier one). A node's refusal is logged and not retried.

It runs on a thread of its own; pushes run on the client's event loop. Nothing it meets (a node
gone, a locked file) stops the gateway: each round's failure is logged and the next round runs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from swarmllm.client.credit_ledger import CreditLedger
from swarmllm.protocol.credits import CREDITS_HANDLER, CreditStatement, LAYOUT_CREDITS, sign_credit_statement
from swarmllm.state import state_dir
from swarmllm.swarm import load_or_create

logger = logging.getLogger(__name__)
PUSH_TIMEOUT = 10.0


def gateway_identity_path() -> Path:
    return state_dir() / "identities" / "gateway.key"


def gateway_identity(path: Optional[Path] = None):
    """The gateway's signing key (made on first use, kept across restarts)."""
    return load_or_create(path or gateway_identity_path())


class CreditIssuer:
    def __init__(self, client, ledger: CreditLedger, receipts_path: Path, period: float, identity=None,
                 clock: Callable[[], float] = time.time):
        self.client, self.ledger, self.receipts_path = client, ledger, Path(receipts_path)
        self.period, self.clock = period, clock
        self.identity = identity or gateway_identity()
        self.delivered = self.refused = self.failed = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def gateway(self) -> str:
        return self.identity.peer_id

    def _sign(self, statement: CreditStatement):
        return sign_credit_statement(statement, public_key=self.identity.public_key, sign=self.identity.sign,
                                     now=self.clock())

    def run_once(self) -> list[CreditStatement]:
        """One round: settle, issue, push. The statements issued this round."""
        now = self.clock()
        if self.client.receipts is not None:
            self.client.receipts.flush()
        self.ledger.settle(self.receipts_path, now)
        issued = self.ledger.issue(self.gateway, now, self._sign)
        blocked: set[str] = set()
        for node, sequence, envelope in self.ledger.undelivered():
            if node in blocked:
                continue
            answer = self._push(node, LAYOUT_CREDITS + envelope.encode())
            if answer is None:
                blocked.add(node)  # later sequences wait for this one
                self.failed += 1
                continue
            if answer != b"ok":
                self.refused += 1
                logger.warning("node %s refused credit statement %d: %s", node, sequence,
                               answer.decode("utf-8", "replace"))
            else:
                self.delivered += 1
            self.ledger.mark_delivered(node, sequence)
        return issued

    def _push(self, node: str, frame: bytes) -> Optional[bytes]:
        async def push() -> bytes:
            stream = await self.client.swarm.open_stream(node, CREDITS_HANDLER, timeout=PUSH_TIMEOUT)
            try:
                await stream.send(frame)
                return bytes(await stream.recv())
            finally:
                stream.close()
        try:
            return self.client.loop.run(push(), timeout=PUSH_TIMEOUT * 2)
        except Exception as e:  # unreachable, gone, a broken stream: try again next period
            logger.info("could not push credits to %s: %s", node, e)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.run_once()
            except Exception:  # the issuer must never take the gateway down
                logger.exception("credit round failed")

    def start(self) -> "CreditIssuer":
        self._thread = threading.Thread(target=self._run, name="swarmllm-credits", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PUSH_TIMEOUT * 2 + 5)
