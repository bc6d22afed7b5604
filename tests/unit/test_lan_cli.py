"""The CLI's LAN flags: --initial-peers is optional where a swarm can be found by mDNS, and the
policy on what to do without them (no network: discovery is given no time or turned off)."""

from __future__ import annotations

import pytest

from swarmllm import cli
from swarmllm.cli_parser import build_parser
from swarmllm.server.node import ServerConfig


@pytest.mark.parametrize("command", [["bootstrap"], ["serve"], ["gateway"], ["generate", "hi"]])
def test_initial_peers_are_optional_and_lan_flags_exist(command):
    args = build_parser().parse_args(command)
    assert args.initial_peers == [] and not args.no_lan and args.lan_timeout == 2.5 and args.swarm_name == "default"
    args = build_parser().parse_args(command + ["--no-lan", "--lan-timeout", "0.5", "--swarm-name", "lab"])
    assert args.no_lan and args.lan_timeout == 0.5 and args.swarm_name == "lab"


def test_up_has_no_lan():
    assert not build_parser().parse_args(["up"]).no_lan and build_parser().parse_args(["up", "--no-lan"]).no_lan


def test_loopback_listeners_stay_off_the_lan():
    args = build_parser().parse_args(["bootstrap"])
    assert cli._lan_enabled(args, "0.0.0.0") and cli._lan_enabled(args, "192.168.1.5") and cli._lan_enabled(args, None)
    assert not any(cli._lan_enabled(args, host) for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"))
    assert not cli._lan_enabled(build_parser().parse_args(["bootstrap", "--no-lan"]), "0.0.0.0")


def test_explicit_peers_skip_discovery_and_nodes_may_start_a_swarm():
    args = build_parser().parse_args(["serve", "--initial-peers", "/ip4/10.0.0.1/tcp/1/p2p/X"])
    assert cli._initial_peers(args, may_start=True, listen_host="0.0.0.0") == ["/ip4/10.0.0.1/tcp/1/p2p/X"]
    assert cli._initial_peers(build_parser().parse_args(["serve", "--no-lan"]), may_start=True, listen_host="0.0.0.0") == []
    # A zero timeout: nothing looked for, nothing found, a new swarm.
    args = build_parser().parse_args(["bootstrap", "--lan-timeout", "0"])
    assert cli._initial_peers(args, may_start=True, listen_host="0.0.0.0") == []


def test_clients_without_peers_get_a_sentence():
    with pytest.raises(cli.UsageError, match="--initial-peers MADDR.*--local"):
        cli._initial_peers(build_parser().parse_args(["generate", "--no-lan", "hi"]), may_start=False)
    from swarmllm.swarm.lan import NoLanSwarmError

    with pytest.raises(NoLanSwarmError, match="no swarm 'lab' was found on the local network"):
        cli._initial_peers(build_parser().parse_args(["gateway", "--lan-timeout", "0", "--swarm-name", "lab"]),
                           may_start=False)
    assert cli.main(["gateway", "--lan-timeout", "0"]) == 2  # printed as one sentence, not a traceback


def test_serve_flags_map_onto_lan_config():
    config = ServerConfig.from_flags(vars(build_parser().parse_args(["serve", "--swarm-name", "lab"])))
    assert config.lan and config.swarm_name == "lab"
    assert not ServerConfig.from_flags(vars(build_parser().parse_args(["serve", "--no-lan"]))).lan
    assert not ServerConfig(model="m").lan  # programmatic nodes (tests) stay off the LAN unless asked
    with pytest.raises(ValueError, match="--swarm-name"):
        ServerConfig(model="m", swarm_name="a b")


def test_a_volunteer_falls_back_to_the_public_bootstrap_list_then_starts_a_swarm(monkeypatch, capsys):
    from swarmllm.cli_volunteer import _peers

    args = build_parser().parse_args(["volunteer", "--no-lan"])
    monkeypatch.setenv("SWARMLLM_BOOTSTRAP_PEERS", "/ip4/10.0.0.9/tcp/1/p2p/A, /ip4/10.0.0.8/tcp/1/p2p/B")
    assert _peers(args) == ["/ip4/10.0.0.9/tcp/1/p2p/A", "/ip4/10.0.0.8/tcp/1/p2p/B"]
    assert "public swarm through 2 bootstrap" in capsys.readouterr().err
    explicit = build_parser().parse_args(["volunteer", "--no-lan", "--initial-peers", "/ip4/10.0.0.1/tcp/1/p2p/X"])
    assert _peers(explicit) == ["/ip4/10.0.0.1/tcp/1/p2p/X"]  # what the volunteer names comes first
    monkeypatch.setenv("SWARMLLM_BOOTSTRAP_PEERS", "")
    assert _peers(args) == [] and "starts a swarm of its own" in capsys.readouterr().err
