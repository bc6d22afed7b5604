"""What a step receipt costs: signing on the server, checking on the client, and the SQLite rows.

Per receipt (one step of one server), median of --repeats runs over a one-token float32 step
(hidden [1, 1, 576]: 2,304 bytes, smollm2-135m) and a 128-position prefill step:
- server: hash the output bytes, sign, encode the frame (server/receipts.py ReceiptIssuer.issue; the
  input hash is taken as the step arrives), queue the work-log row;
- client: decode the frame, the receipt book's checks with the Ed25519 verification
  (client/receipt_check.py), and once per step the hashes of what it sent and received;
- storage: the receipt store's rows queued and committed by its writer thread, and the work
  log's, measured as wall time per row over a batch (state.BackgroundWriter).
A token through a chain of k servers costs k receipts; the table gives k = 3.

    python benchmarks/receipts.py            # results/receipts.{json,md}
    python benchmarks/receipts.py --quick --out /tmp/receipts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from swarmllm.client.receipt_check import ReceiptBook, Signer
from swarmllm.client.receipts import ReceiptStore
from swarmllm.protocol import decode_frame
from swarmllm.protocol.receipts import digest
from swarmllm.server.receipts import ReceiptIssuer
from swarmllm.server.work_log import WorkEntry, WorkLog
from swarmllm.swarm.identity import Identity

RESULTS = Path(__file__).parent / "results"
CLASS = "float32.none.auto.avx2-amd.r1.t2.0123456789ab"


def _us(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def measure(positions: int, repeats: int, folder: Path) -> dict:
    server, client = Identity.generate(), Identity.generate()
    payload = bytes(range(256)) * (positions * 2304 // 256)
    issuer = ReceiptIssuer(server.sign, server.peer_id)  # signing alone; the work log's row is timed below
    step = dict(session_id="5f3c" * 8, requester=client.peer_id, start_position=100, positions=positions,
                span=(0, 10), model_id="smollm2-135m", input_hash=digest(payload), input_bytes=len(payload),
                output=payload, compute_class=CLASS)
    counter = iter(range(10**9))
    issue_us = _us(lambda: issuer.issue(step_id=next(counter), **step), repeats)
    hash_us = _us(lambda: digest(payload), repeats)
    frame = issuer.issue(step_id=0, **step)
    receipt, _ = decode_frame(frame)
    signer = (Signer(server.peer_id, step["session_id"], 0, 10, CLASS),)
    book = ReceiptBook("smollm2-135m")
    output_hash = digest(payload)

    def check() -> None:
        decoded, _ = decode_frame(frame)
        book.expect(0, 100, positions, signer, step["input_hash"], lambda result: None)
        book.add_result(0, server.peer_id, None, output_hash)
        book.add_receipt(server.peer_id, decoded)

    check_us = _us(check, repeats)
    store_queue_us, store_us = _rows_us(ReceiptStore(folder / f"receipts-{positions}.sqlite"),
                                        lambda store: store.add("session", "smollm2-135m", [receipt]), repeats)
    entry = WorkEntry(time=receipt.time, requester=client.peer_id, session_id=receipt.session_id,
                      step_id=0, start_position=100, positions=positions, span_start=0, span_end=10,
                      model_id="smollm2-135m", input_hash=receipt.input_hash, output_hash=receipt.output_hash,
                      input_bytes=len(payload), output_bytes=len(payload), compute_class=CLASS)
    log_queue_us, log_us = _rows_us(WorkLog(folder / f"work-{positions}.sqlite"), lambda log: log.record(entry),
                                    repeats)
    return {"positions": positions, "payload_bytes": len(payload), "frame_bytes": len(frame),
            "server_issue_us": issue_us, "hash_us": hash_us, "client_check_us": check_us,
            "client_store_queue_us": store_queue_us, "client_store_committed_us": store_us,
            "work_log_queue_us": log_queue_us, "work_log_committed_us": log_us,
            # 3 servers: each hashes its input, signs, queues its work-log row; the client checks 3 receipts,
            # queues 3 rows, and hashes what it sent and what it received once each
            "per_token_3_hops_us": 3 * (issue_us + hash_us + log_queue_us + check_us + store_queue_us) + 2 * hash_us}


def _rows_us(db, add, repeats: int) -> tuple[float, float]:
    """(us per row to queue it, us per row until committed) over a batch, on a fresh database."""
    batch = max(200, repeats)
    started = time.perf_counter()
    for _ in range(batch):
        add(db)
    queued = (time.perf_counter() - started) * 1e6 / batch
    db.flush()
    committed = (time.perf_counter() - started) * 1e6 / batch
    db.close()
    return queued, committed


def markdown(rows: list[dict]) -> str:
    lines = ["# Step receipts: cost per receipt (median, this machine)", "",
             "Server: hash output + sign + encode the frame; hash: sha256 of a step's payload (each server hashes "
             "its input as it arrives, the client what it sends and what it receives); work log / store: a row "
             "queued on the caller's thread (in brackets: wall time per row until its writer thread committed "
             "it); client: decode + checks + Ed25519 verify. Per token: 3 x (sign + hash + work log + check + "
             "store) + 2 hashes on the client.", "",
             "| step | payload bytes | receipt frame bytes | server sign us | hash us | work log us | client check us "
             "| store us | per token, 3 hops, us |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['positions']} position(s) | {r['payload_bytes']} | {r['frame_bytes']} | "
                     f"{r['server_issue_us']:.0f} | {r['hash_us']:.1f} | {r['work_log_queue_us']:.1f} "
                     f"({r['work_log_committed_us']:.0f}) | {r['client_check_us']:.0f} | "
                     f"{r['client_store_queue_us']:.1f} ({r['client_store_committed_us']:.0f}) | "
                     f"{r['per_token_3_hops_us']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "receipts.json"))
    args = parser.parse_args()
    repeats = 50 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(positions, repeats, Path(folder)) for positions in (1, 128)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "repeats": repeats}, indent=2))
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
