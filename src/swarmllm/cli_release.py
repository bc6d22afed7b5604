"""`swarmllm release keygen | sign | publish | show`: the release key holder's side of auto-update.

    swarmllm release keygen --out ~/offline/release.key       # once; the public half goes into
                                                              # PROJECT_RELEASE_KEYS (or SWARMLLM_RELEASE_KEYS)
    swarmllm release sign dist/swarmllm-0.2.0-py3-none-any.whl --key ~/offline/release.key
    swarmllm release publish dist/release.json --initial-peers /ip4/.../p2p/Qm...
    swarmllm release show https://example.org/releases/        # or a file, or (no argument) the swarm's DHT

`sign` reads the version from the wheel's metadata and the protocol range from the wheel's own
protocol/messages.py, so a record can never claim another range than the code it names. The
release key is an Ed25519 key in the same file format as node identities (swarm/identity.py).
See docs/updates.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
import time
import zipfile
from pathlib import Path

# The protocol package imports torch (codec.py): imported inside the commands, so that building the
# CLI's parser stays fast (tests/unit/test_cli_parser.py).


class ReleaseError(ValueError):
    """A release command cannot go on; the message says why."""


def wheel_facts(path: Path) -> dict:
    """Version and protocol range of a swarmllm wheel, read from inside it."""
    try:
        with zipfile.ZipFile(path) as wheel:
            names = wheel.namelist()
            metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
            messages = "swarmllm/protocol/messages.py"
            if metadata is None or messages not in names:
                raise ReleaseError(f"{path} is not a swarmllm wheel (no METADATA or {messages})")
            meta, code = wheel.read(metadata).decode(), wheel.read(messages).decode()
    except (zipfile.BadZipFile, OSError) as e:
        raise ReleaseError(f"cannot read the wheel {path}: {e}") from None
    name = re.search(r"^Name: (.+)$", meta, re.M)
    version = re.search(r"^Version: (.+)$", meta, re.M)
    newest = re.search(r"^PROTOCOL_VERSION = (\d+)", code, re.M)
    oldest = re.search(r"^MIN_PROTOCOL_VERSION = (\d+)", code, re.M)
    if not (name and version and newest) or name.group(1).strip().lower() != "swarmllm":
        raise ReleaseError(f"{path} is not a swarmllm wheel (package {name.group(1) if name else '?'})")
    return {"version": version.group(1).strip(), "protocol_version": int(newest.group(1)),
            "min_protocol_version": int(oldest.group(1) if oldest else newest.group(1))}


def cmd_keygen(args) -> int:
    from swarmllm.swarm.identity import Identity

    out = Path(args.out).expanduser()
    if out.exists():
        raise ReleaseError(f"{out} exists: a release key is made once (delete the file first to replace it)")
    key = Identity.generate()
    key.save(out)
    print(key.public_key[4:].hex())
    print(f"private key written to {out} (keep it offline); nodes trust the public key above when it is in "
          "PROJECT_RELEASE_KEYS (protocol/releases.py) or in SWARMLLM_RELEASE_KEYS", file=sys.stderr)
    return 0


def cmd_sign(args) -> int:
    from swarmllm.protocol.releases import MAX_RELEASE_TTL, RELEASE_FILE, ReleaseRecord, release_file, sign_release
    from swarmllm.swarm.identity import Identity

    wheel = Path(args.wheel)
    if not 0 < args.days * 86400 <= MAX_RELEASE_TTL:
        raise ReleaseError(f"--days must be in (0, {MAX_RELEASE_TTL / 86400:.0f}]")
    facts = wheel_facts(wheel)
    data = wheel.read_bytes()
    key = Identity.load(Path(args.key).expanduser())
    now = time.time()
    record = ReleaseRecord(**facts, wheel_name=wheel.name, wheel_sha256=hashlib.sha256(data).hexdigest(),
                           wheel_size=len(data), wheel_url=args.url or wheel.name, published_at=now, notes=args.notes)
    envelope = sign_release(record, public_key=key.public_key, sign=key.sign, expiration=now + args.days * 86400)
    out = Path(args.out) if args.out else wheel.parent / RELEASE_FILE
    out.write_text(release_file(envelope))
    print(f"signed swarmllm {record.version} (protocol v{record.min_protocol_version}-v{record.protocol_version}, "
          f"sha256 {record.wheel_sha256[:16]}…) as {out}; valid {args.days:g} days")
    return 0


def _read_source(source: str) -> dict:
    from swarmllm.protocol.releases import read_release_file

    if source.startswith(("http://", "https://", "file://")):
        from swarmllm.volunteer.updater import _index_file_url, _open

        with _open(_index_file_url(source), 30.0) as answer:
            return read_release_file(answer.read(16385))
    return read_release_file(Path(source).read_bytes())


def _trusted() -> frozenset[str]:
    from swarmllm.swarm import trusted_release_signers

    return trusted_release_signers()


def cmd_publish(args) -> int:
    from swarmllm.protocol.envelope import SignedRecord
    from swarmllm.protocol.releases import RELEASE_KEY, verify_release
    from swarmllm.swarm import SwarmNode, dht_time

    if not args.initial_peers:
        raise ReleaseError("pass --initial-peers MADDR: the swarm to publish the release in")
    value = _read_source(args.file)
    release = verify_release(value, _trusted(), now=dht_time())  # refused here rather than by every DHT node
    envelope = SignedRecord.model_validate(value)

    async def main() -> bool:
        swarm = await SwarmNode.create(list(args.initial_peers), client_mode=True)
        try:
            return await swarm.store_signed(envelope)
        finally:
            await swarm.shutdown()

    if not asyncio.run(main()):
        raise ReleaseError("no DHT node of the swarm stored the release (see their logs)")
    print(f"published swarmllm {release.version} in the swarm's DHT under {RELEASE_KEY}")
    return 0


def cmd_show(args) -> int:
    from swarmllm.protocol.envelope import RecordRejected
    from swarmllm.protocol.releases import RELEASE_KEY, verify_release
    from swarmllm.swarm import SwarmNode, dht_time

    trusted = _trusted()
    if args.source:
        values = [_read_source(args.source)]
    else:
        if not args.initial_peers:
            raise ReleaseError("pass a release.json, an index URL, or --initial-peers MADDR for the swarm's DHT")

        async def lookup() -> list:
            swarm = await SwarmNode.create(list(args.initial_peers), client_mode=True)
            try:
                return list((await swarm.get_records([RELEASE_KEY])).get(RELEASE_KEY, {}).values())
            finally:
                await swarm.shutdown()

        values = asyncio.run(lookup())
        if not values:
            raise ReleaseError("the swarm's DHT holds no release signed by a trusted key")
    shown = []
    for value in values:
        try:
            shown.append(verify_release(value, trusted, now=dht_time()).model_dump())
        except RecordRejected as e:
            shown.append({"refused": str(e)})
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        for item in shown:
            print(item.get("refused") and f"refused: {item['refused']}" or
                  f"swarmllm {item['version']} (protocol v{item['min_protocol_version']}-v{item['protocol_version']}): "
                  f"{item['wheel_name']} sha256 {item['wheel_sha256']} {item['notes']}".rstrip())
    return 0 if any("refused" not in item for item in shown) else 1


def cmd_release(args) -> int:
    from swarmllm.protocol.envelope import RecordRejected

    commands = {"keygen": cmd_keygen, "sign": cmd_sign, "publish": cmd_publish, "show": cmd_show}
    try:
        return commands[args.release_command](args)
    except (ReleaseError, RecordRejected, OSError) as e:
        print(f"swarmllm release {args.release_command}: {e}", file=sys.stderr)
        return 2

