"""Benchmark: what signing and validating DHT records costs, and how many bytes they take.

Measured in-process on the code the nodes run (no network: the DHT's own cost is not counted):
- keys: Ed25519 (what swarmllm uses) against hivemind's RSA-2048 (PSS, SHA-256): key
  generation, signing and verifying a record-sized message, and key + signature bytes;
- per announce, one node and all its block keys + its registry entry (10 blocks: a node of a
  3-node smollm2-135m swarm; 30: one node serving it all): signing them (`seal_records`),
  and what a DHT node that stores them spends validating them (`RecordValidator`, with the
  signature cache cold, as for every fresh announcement);
- per lookup of 30 records (3 servers x 10 blocks each, one entry per block key): the
  validator over one peer's reply (cold cache), then the reader's `parse_records` of the same
  values (warm: what a client pays after its DHT node validated them) and cold;
- DHT bytes per record, before (an unsigned ServerRecord map, PROTOCOL_VERSION 2) and after
  (the signed envelope), msgpack-encoded as hivemind stores them.

    python benchmarks/records.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from swarmllm.swarm import hivemind_core  # noqa: F401
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer

from swarmllm.protocol import MODEL_REGISTRY_KEY, ComputeClass, ModelRecord, ServerRecord, block_key, parse_records
from swarmllm.protocol import envelope as envelope_module
from swarmllm.swarm.identity import Identity
from swarmllm.swarm.node import catalog_n_blocks, dht_time, seal_records
from swarmllm.swarm.validation import RecordValidator

MODEL, N_BLOCKS = "smollm2-135m", 30


def timed_ms(function, repeats: int) -> float:
    """Median over `repeats` runs, in ms."""
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


def record_for(identity: Identity, start: int, end: int, now: float) -> ServerRecord:
    return ServerRecord(peer_id=identity.peer_id, model_id=MODEL, start=start, end=end, n_blocks=N_BLOCKS,
                        throughput=42.0, free_cache_tokens=120_000, max_session_length=4096,
                        compute_class=ComputeClass(compute_dtype="bfloat16", software_version="0.1.0",
                                                   torch_version="2.13.0+cpu", torch_build="cf30153c4c13",
                                                   isa="avx512-bf16-intel", row_tile=4, threads=8),
                        addresses=(f"/ip4/203.0.113.7/tcp/31337/p2p/{identity.peer_id}",),
                        announced_at=now, ring=True)


def key_choice(repeats: int) -> dict:
    message = b"x" * 600  # about one record's signed payload
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_signature = ed.sign(message)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    rs = rsa.generate_private_key(65537, 2048)
    rs_signature = rs.sign(message, pss, hashes.SHA256())
    rsa_public = rs.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "ed25519": {"keygen_ms": timed_ms(ed25519.Ed25519PrivateKey.generate, repeats),
                    "sign_ms": timed_ms(lambda: ed.sign(message), repeats),
                    "verify_ms": timed_ms(lambda: ed.public_key().verify(ed_signature, message), repeats),
                    "public_key_bytes": 36, "signature_bytes": len(ed_signature)},
        "rsa2048": {"keygen_ms": timed_ms(lambda: rsa.generate_private_key(65537, 2048), max(3, repeats // 20)),
                    "sign_ms": timed_ms(lambda: rs.sign(message, pss, hashes.SHA256()), repeats),
                    "verify_ms": timed_ms(lambda: rs.public_key().verify(rs_signature, message, pss, hashes.SHA256()),
                                          repeats),
                    "public_key_bytes": len(rsa_public) + 4, "signature_bytes": len(rs_signature)},
    }


def dht_records(envelopes, subkey: str) -> list[DHTRecord]:
    return [DHTRecord(DHTID.generate(source=e.key).to_bytes(), MSGPackSerializer.dumps(subkey),
                      MSGPackSerializer.dumps(e.to_value()), e.expiration) for e in envelopes]


def announce(blocks: int, repeats: int) -> dict:
    identity, now = Identity.generate(), dht_time()
    record = record_for(identity, 0, blocks, now)
    items = [(block_key(MODEL, b), record) for b in range(blocks)]
    items.append((MODEL_REGISTRY_KEY, ModelRecord(model_id=MODEL, n_blocks=N_BLOCKS)))
    sign_ms = timed_ms(lambda: seal_records(identity, items, now + 15), repeats)
    stored = dht_records(seal_records(identity, items, now + 15), identity.peer_id)
    validator = RecordValidator(catalog_n_blocks())

    def validate_all() -> None:
        envelope_module._signature_valid.cache_clear()  # a fresh announcement: nothing verified yet
        assert all(validator.validate(r) for r in stored)

    return {"blocks": blocks, "records": len(items), "signatures": 2, "sign_ms": sign_ms,
            "validate_at_a_storage_node_ms": timed_ms(validate_all, repeats)}


def lookup(repeats: int) -> dict:
    now, found, stored = dht_time(), {}, []
    for i in range(3):
        identity = Identity.generate()
        record = record_for(identity, 10 * i, 10 * i + 10, now)
        envelopes = seal_records(identity, [(block_key(MODEL, b), record) for b in range(10 * i, 10 * i + 10)],
                                 now + 15)
        stored += dht_records(envelopes, identity.peer_id)
        for e in envelopes:
            found.setdefault(e.key, {})[identity.peer_id] = e.to_value()
    validator = RecordValidator(catalog_n_blocks())

    def validate_cold() -> None:
        envelope_module._signature_valid.cache_clear()
        assert all(validator.validate(r) for r in stored)

    def parse_cold() -> None:
        envelope_module._signature_valid.cache_clear()
        assert len(parse_records(found, MODEL, N_BLOCKS, now=dht_time())) == 3

    def verify_each_uncached() -> None:  # what 30 signature checks cost without the cache
        for r in stored:
            envelope_module._signature_valid.cache_clear()
            value = MSGPackSerializer.loads(r.value)
            envelope_module.open_envelope(value, MSGPackSerializer.loads(r.subkey))

    validate_cold()
    return {"records": len(stored), "servers": 3,
            "validate_one_reply_ms": timed_ms(validate_cold, repeats),
            "parse_records_after_validation_ms": timed_ms(
                lambda: parse_records(found, MODEL, N_BLOCKS, now=dht_time()), repeats),
            "parse_records_cold_ms": timed_ms(parse_cold, repeats),
            "thirty_signature_checks_without_cache_ms": timed_ms(verify_each_uncached, repeats)}


def sizes() -> dict:
    identity, now = Identity.generate(), dht_time()
    record = record_for(identity, 0, 10, now)
    before = len(MSGPackSerializer.dumps(record.model_dump(mode="json")))
    sealed = seal_records(identity, [(block_key(MODEL, 0), record)], now + 15)[0]
    after = len(MSGPackSerializer.dumps(sealed.to_value()))
    registry = ModelRecord(model_id=MODEL, n_blocks=N_BLOCKS)
    registry_before = len(MSGPackSerializer.dumps(registry.model_dump(mode="json")))
    registry_after = len(MSGPackSerializer.dumps(
        seal_records(identity, [(MODEL_REGISTRY_KEY, registry)], now + 15)[0].to_value()))
    return {"server_record_before": before, "server_record_after": after,
            "registry_entry_before": registry_before, "registry_entry_after": registry_after}


def markdown(results: dict) -> str:
    keys, lines = results["keys"], ["# DHT records: signing and validation", "",
                                    f"{results['machine']}; medians of {results['repeats']} runs.", "",
                                    "| key | keygen ms | sign ms | verify ms | key + signature bytes |",
                                    "|---|---|---|---|---|"]
    for name, k in keys.items():
        lines.append(f"| {name} | {k['keygen_ms']:.3f} | {k['sign_ms']:.3f} | {k['verify_ms']:.3f} | "
                     f"{k['public_key_bytes'] + k['signature_bytes']} |")
    lines += ["", "| per announce (one node) | records | signatures | sign ms | validate at a storage node ms |",
              "|---|---|---|---|---|"]
    for a in results["announce"]:
        lines.append(f"| {a['blocks']} blocks + registry entry | {a['records']} | {a['signatures']} | "
                     f"{a['sign_ms']:.2f} | {a['validate_at_a_storage_node_ms']:.2f} |")
    look = results["lookup"]
    lines += ["", f"| per lookup ({look['records']} records, {look['servers']} servers) | ms |", "|---|---|",
              f"| validator, one peer's reply (cold) | {look['validate_one_reply_ms']:.2f} |",
              f"| reader's parse_records after validation (warm) | {look['parse_records_after_validation_ms']:.2f} |",
              f"| reader's parse_records (cold) | {look['parse_records_cold_ms']:.2f} |",
              f"| 30 signature checks without the cache | {look['thirty_signature_checks_without_cache_ms']:.2f} |"]
    size = results["bytes"]
    lines += ["", "| DHT bytes per value | before (v2, unsigned) | after (v3, signed) |", "|---|---|---|",
              f"| server record | {size['server_record_before']} | {size['server_record_after']} |",
              f"| registry entry | {size['registry_entry_before']} | {size['registry_entry_after']} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting for CI: few repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    repeats = 5 if args.quick else 200
    results = {"machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
               "repeats": repeats, "keys": key_choice(repeats),
               "announce": [announce(10, repeats), announce(30, repeats)], "lookup": lookup(repeats),
               "bytes": sizes()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps(results, indent=2))
    (out / "records.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
