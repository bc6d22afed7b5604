"""The owner commands without a swarm: `id --verbose`, `trusted`, `unpair`, `pair`'s usage errors,
and `serve --owner-key` reaching the server's config."""

from __future__ import annotations

import json

import pytest

from swarmllm.cli import main
from swarmllm.cli_parser import build_parser
from swarmllm.owners import OwnerKey, TrustStore, owner_key


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_HOME", str(tmp_path))
    return tmp_path


def test_id_verbose_names_both_key_files(home, capsys):
    assert main(["id", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert f"owner key file: {home / 'owner.key'}" in err and "identity file:" in err
    shared = home / "household.key"
    OwnerKey.generate().save(shared)
    assert main(["id", "--owner-key", str(shared)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == owner_key(shared).owner_id


def test_trusted_lists_and_unpair_revokes(home, capsys):
    friend = OwnerKey.generate()
    with TrustStore(owner_key()) as trust:
        trust.add_trusted(friend.public_key, "Ana")
    assert main(["trusted"]) == 0
    out = capsys.readouterr().out
    assert owner_key().owner_id in out and friend.owner_id in out and "Ana" in out and "trusted" in out
    assert main(["unpair", friend.owner_id]) == 0
    assert "no longer trusted" in capsys.readouterr().out
    assert main(["trusted", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trusted"] == []
    assert main(["trusted", "--all", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["trusted"]
    assert entry["owner_id"] == friend.owner_id and entry["revoked_at"] is not None
    assert main(["unpair", friend.owner_id]) == 2  # nothing left to revoke: a sentence, not a traceback
    assert "no trusted owner match" in capsys.readouterr().err


def test_pair_refuses_a_malformed_code_or_no_swarm_before_joining(home, capsys):
    assert main(["pair", "12345", "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x"]) == 2
    assert "is not a pairing code" in capsys.readouterr().err
    assert main(["pair"]) == 2
    assert "pass --initial-peers" in capsys.readouterr().err


def test_a_bad_owner_key_is_one_sentence(home, capsys):
    assert main(["trusted", "--owner-key", str(home / "missing.key")]) == 2
    assert "there is no owner key at" in capsys.readouterr().err


def test_serve_owner_key_reaches_the_server_config():
    from swarmllm.server.node import ServerConfig

    for flags, expected in ((["--owner-key", "/keys/owner.key"], "/keys/owner.key"), (["--owner-key", "off"], "off"),
                            ([], None)):
        args = build_parser().parse_args(["serve", "--initial-peers", "/ip4/127.0.0.1/tcp/1", *flags])
        assert ServerConfig.from_flags(vars(args)).owner_key_path == expected
