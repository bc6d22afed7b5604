"""A test-only hostile node: `swarmllm serve` that computes honestly but lies in its step receipts.

Run as `python tests/hostile/receipt_liar.py LIES serve ...`, LIES a comma-separated list: the
n-th session this node serves gets the n-th lie (the last one repeats):
- "output-hash": receipts validly signed, over an output hash that is not what it sent;
- "signature": receipts of the right bytes whose signature is garbage;
- "none": honest receipts.
Its outputs are correct, so only a client that checks receipts notices.
"""

from __future__ import annotations

import sys

from swarmllm import cli
from swarmllm.protocol.receipts import LAYOUT_RECEIPT, decode_receipt, digest, sign_receipt
from swarmllm.server.receipts import ReceiptIssuer


def main() -> int:
    lies = sys.argv[1].split(",")
    honest = ReceiptIssuer.issue
    sessions: list[str] = []

    def lying_issue(self, **step) -> bytes:
        frame = honest(self, **step)
        if step["session_id"] not in sessions:
            sessions.append(step["session_id"])
        lie = lies[min(sessions.index(step["session_id"]), len(lies) - 1)]
        if lie == "output-hash":
            receipt = decode_receipt(frame)
            fields = receipt.model_dump(exclude={"type", "signature"})
            fields["output_hash"] = digest(b"what I would like you to believe")
            return sign_receipt(fields, self.sign)[1]
        if lie == "signature":
            assert frame[:1] == LAYOUT_RECEIPT
            return frame[:-64] + bytes(64)
        return frame

    ReceiptIssuer.issue = lying_issue
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
