"""The updater's policy and checks (volunteer/updater.py), without a node: which release, which bytes."""

import hashlib
import time

import pytest

from swarmllm.protocol.envelope import RecordRejected
from swarmllm.protocol.releases import ReleaseRecord, release_file, sign_release, trusted_signers
from swarmllm.swarm.identity import Identity
from swarmllm.volunteer.updater import (
    DEFAULT_RELEASE_INDEX, Found, UpdateState, choose_update, config_from_flags, fetch_wheel, release_from_index,
    wheel_location,
)

NOW = time.time()
WHEEL = b"PK\x03\x04 not really a wheel, but bytes with a hash" * 100


def _release(version: str, data: bytes = WHEEL, url: str = "w.whl", published: float = NOW) -> ReleaseRecord:
    return ReleaseRecord(version=version, protocol_version=8, min_protocol_version=8,
                         wheel_name=f"swarmllm-{version}-py3-none-any.whl", wheel_sha256=hashlib.sha256(data).hexdigest(),
                         wheel_size=len(data), wheel_url=url, published_at=published)


def _found(version: str, **kw) -> Found:
    return Found(_release(version, **kw), envelope=None, source="dht")


def test_only_a_newer_release_that_has_not_failed_is_chosen():
    found = [_found("0.1.0"), _found("0.2.0"), _found("0.10.0"), _found("0.9.9")]
    assert choose_update("0.1.0", found).release.version == "0.10.0"
    assert choose_update("0.1.0", found, failed=["0.10.0"]).release.version == "0.9.9"
    assert choose_update("0.10.0", found) is None            # nothing newer
    assert choose_update("1.0.0", found) is None             # an old signed release is never a downgrade
    assert choose_update("0.1.0", []) is None
    newest_copy = choose_update("0.1.0", [_found("0.2.0", published=1.0), _found("0.2.0", published=2.0)])
    assert newest_copy.release.published_at == 2.0


def test_a_wheel_is_kept_only_with_the_signed_size_and_hash(tmp_path):
    source = tmp_path / "index"
    source.mkdir()
    (source / "w.whl").write_bytes(WHEEL)
    release = _release("0.2.0")
    got = fetch_wheel(release, (source / "w.whl").as_uri(), tmp_path / "updates")
    assert got.read_bytes() == WHEEL and got.name == release.wheel_name
    (source / "w.whl").write_bytes(WHEEL[:-1] + b"!")          # swapped on the server: same size, other bytes
    with pytest.raises(RecordRejected, match="not the signed one"):
        fetch_wheel(_release("0.3.0"), (source / "w.whl").as_uri(), tmp_path / "updates")
    (source / "w.whl").write_bytes(WHEEL * 2)                  # longer than signed: not read past the size
    with pytest.raises(RecordRejected, match="not the signed one"):
        fetch_wheel(_release("0.4.0"), (source / "w.whl").as_uri(), tmp_path / "updates")
    assert sorted(p.name for p in (tmp_path / "updates").iterdir()) == [release.wheel_name]


def test_the_index_serves_a_signed_release_and_relative_wheels(tmp_path):
    key = Identity.generate()
    envelope = sign_release(_release("0.2.0"), public_key=key.public_key, sign=key.sign, expiration=NOW + 3600)
    (tmp_path / "release.json").write_text(release_file(envelope))
    index = tmp_path.as_uri() + "/"
    found = release_from_index(index, trusted_signers([key.public_key[4:].hex()]), NOW)
    assert (found.release.version, found.source) == ("0.2.0", "index")
    assert wheel_location(found.release, index) == (tmp_path / "w.whl").as_uri()
    assert wheel_location(_release("0.2.0", url="https://x.org/w.whl"), index) == "https://x.org/w.whl"
    with pytest.raises(RecordRejected, match="not a trusted release key"):
        release_from_index(index, trusted_signers(), NOW)
    with pytest.raises(ValueError, match="only http"):
        release_from_index("ftp://example.org/", trusted_signers(), NOW)


def test_flags_make_the_config():
    assert config_from_flags(False, 3600, None) is None
    assert config_from_flags(True, 60, None).index == DEFAULT_RELEASE_INDEX
    assert config_from_flags(True, 60, "off").index is None
    assert config_from_flags(True, 60, "file:///srv/r/").check_seconds == 60
    with pytest.raises(ValueError, match="positive"):
        config_from_flags(True, 0, None)
    assert UpdateState().to_json()["state"] == "starting"


def test_blocking_work_runs_on_a_daemon_thread_and_errors_come_back():
    import asyncio
    import threading

    from swarmllm.volunteer.updater import in_daemon_thread

    def where():
        return threading.current_thread().daemon

    def fails():
        raise OSError("network is unreachable")

    assert asyncio.run(in_daemon_thread(where)) is True
    with pytest.raises(OSError, match="unreachable"):
        asyncio.run(in_daemon_thread(fails))
