"""Identity files (swarm/identity.py): p2pd's format, private modes, locks, default names, `swarmllm id`."""

from __future__ import annotations

import os
import stat

import pytest
from hivemind.p2p.p2p_daemon import P2P
from hivemind.proto import crypto_pb2

from swarmllm.cli import main
from swarmllm.owners import owner_key
from swarmllm.swarm.identity import (
    Identity, IdentityError, claim_identity, claim_identity_folder, default_identity_path, load_or_create,
)


def test_an_identity_file_is_p2pds_protobuf_key_private_to_its_owner(tmp_path):
    identity = Identity.generate()
    path = tmp_path / "state" / "node.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    parsed = crypto_pb2.PrivateKey.FromString(path.read_bytes())
    assert parsed.key_type == crypto_pb2.Ed25519 and len(parsed.data) == 64
    assert Identity.load(path).peer_id == identity.peer_id
    with pytest.raises(FileExistsError):
        Identity.generate().save(path)  # never overwrites a key


def test_a_file_others_can_read_is_refused_with_a_sentence(tmp_path):
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match=r"can be read or changed by other users \(mode 0644\).*chmod 600"):
        Identity.load(path)
    os.chmod(path, 0o400)  # what hivemind itself writes: fine
    assert Identity.load(path).peer_id


def test_an_rsa_identity_or_a_corrupt_file_is_refused(tmp_path):
    rsa = tmp_path / "rsa.key"
    P2P.generate_identity(str(rsa))  # hivemind's own format: RSA
    with pytest.raises(IdentityError, match="not an Ed25519 libp2p key"):
        Identity.load(rsa)
    corrupt = tmp_path / "corrupt.key"
    data = bytearray(Identity.generate().to_bytes())
    data[-1] ^= 1
    corrupt.write_bytes(bytes(data))
    os.chmod(corrupt, 0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        Identity.load(corrupt)


def test_an_identity_is_held_by_one_process_at_a_time(tmp_path):
    path = tmp_path / "node.key"
    first = claim_identity(path)
    with pytest.raises(IdentityError, match="in use by another running process"):
        claim_identity(path)
    first.release()
    again = claim_identity(path)
    assert again.peer_id == first.peer_id
    again.release()


def test_default_names_keep_their_identity_and_a_busy_name_moves_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path))
    first, second = claim_identity(name="node"), claim_identity(name="node")
    assert first.path == tmp_path / "identities" / "node.key" and second.path.name == "node-2.key"
    assert first.peer_id != second.peer_id
    first.release()
    second.release()
    assert claim_identity(name="node").peer_id == first.peer_id  # a restart keeps its peer id
    with pytest.raises(IdentityError, match="node name"):
        default_identity_path("../etc")


def test_swarmllm_id_prints_the_peer_id_then_the_owner_id(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path))
    path = tmp_path / "given.key"
    assert main(["id", "--identity", str(path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [Identity.load(path).peer_id, owner_key().owner_id]
    assert main(["id", "--identity", str(path)]) == 0 and capsys.readouterr().out.splitlines() == printed
    assert main(["id", "--name", "bootstrap"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == load_or_create(tmp_path / "identities" / "bootstrap.key").peer_id


def test_a_folder_of_identities_is_held_by_one_swarm_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path))
    first, second = claim_identity_folder("up"), claim_identity_folder("up")
    assert (first.path, second.path) == (tmp_path / "identities" / "up", tmp_path / "identities" / "up-2")
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o700
    first.release()
    assert claim_identity_folder("up").path == first.path
    second.release()


def test_serve_takes_a_node_name_and_refuses_records_its_peers_would_refuse():
    from swarmllm.cli import build_parser
    from swarmllm.server.node import ServerConfig

    flags = build_parser().parse_args(["serve", "--initial-peers", "x", "--name", "gpu1"])
    config = ServerConfig.from_flags(vars(flags))
    assert config.node_name == "gpu1" and config.identity_path is None
    with pytest.raises(ValueError, match="record_ttl must be in"):
        ServerConfig(model="m", record_ttl=60)
    with pytest.raises(ValueError, match="--throughput must be between"):
        ServerConfig(model="m", throughput=1e12)
