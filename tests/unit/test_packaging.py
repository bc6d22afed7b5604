"""The packaging artifacts (packaging/) against the code they run: a renamed flag, a dropped
command or a drain bound that outgrows a stop timeout fails here, not on a volunteer's machine.

Every `swarmllm ...` command line in compose.yaml, the systemd unit (with the shipped
volunteer.env) and the launchd plist is parsed by swarmllm's own parser; the Dockerfiles'
ENTRYPOINT/CMD must name a real command and both images must share one layout; every stop timeout
must exceed server/node.py's HARD_EXIT_SECONDS. Nothing is built or started here (how the images
and the compose swarm were run for real: docs/installers.md).
"""

from __future__ import annotations

import argparse
import json
import plistlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from swarmllm.cli_parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
DOCKERFILES = [PACKAGING / "docker" / "Dockerfile.cpu", PACKAGING / "docker" / "Dockerfile.cuda"]
UNIT = PACKAGING / "systemd" / "swarmllm-volunteer.service"
PLIST = PACKAGING / "launchd" / "org.swarmllm.volunteer.plist"
SAMPLE_MADDR = "/dns4/bootstrap/tcp/31337/p2p/12D3KooWEj6bXQCFGjr2ZmjUDHCKkre1GHdy7qs2eD2gz5Hwnivv"


def _hard_exit_seconds() -> float:
    # Read from the source rather than imported: server.node pulls in torch and hivemind.
    text = (ROOT / "src" / "swarmllm" / "server" / "node.py").read_text()
    return float(re.search(r"^HARD_EXIT_SECONDS = ([0-9.]+)", text, re.M).group(1))


def _strict_parser() -> argparse.ArgumentParser:
    """build_parser() refusing abbreviations: `--max-mem` parses as --max-memory, but must not pass here."""
    parser = build_parser()
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.allow_abbrev = False
    return parser


def _parse(argv: list[str], where: str):
    """argparse's namespace for `swarmllm ARGV`; a usage error becomes a test failure naming `where`."""
    assert argv and argv[0].endswith("swarmllm"), f"{where}: not a swarmllm command: {argv}"
    try:
        return _strict_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{' '.join(argv)}` does not parse with swarmllm's parser (see the error above)")


def _shell_commands(script: str) -> list[list[str]]:
    """The `swarmllm ...` invocations in a compose shell step, `$$(cat FILE)` standing for the multiaddr."""
    script = re.sub(r'"?\$\$\(cat [^)]*\)"?', SAMPLE_MADDR, script)
    script = script.replace("$$(", " && ")  # a command substitution is a command of its own
    found = []
    for part in re.split(r"&&|\|\||;|\||\)", script):
        words = shlex.split(part)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:1] == ["swarmllm"]:
            found.append(words)
    return found


def _compose() -> dict:
    return yaml.safe_load((PACKAGING / "compose.yaml").read_text())


def test_compose_command_lines_parse_and_agree_on_the_bootstrap():
    services = _compose()["services"]
    commands = {}
    for name, service in services.items():
        lines = [argv for step in service["command"] for argv in _shell_commands(step)]
        assert lines, f"compose service {name} runs no swarmllm command"
        commands[name] = [(argv, _parse(argv, f"compose.yaml service {name}")) for argv in lines]
    used = {args.command for lines in commands.values() for _, args in lines}
    assert {"bootstrap", "volunteer", "gateway"} <= used
    # The multiaddr the bootstrap writes names the port it listens on and the key it uses.
    (_, ident), (_, boot) = commands["bootstrap"]
    assert (ident.command, boot.command) == ("id", "bootstrap")
    assert ident.identity == boot.identity, "the peer id written is not the bootstrap's"
    step = services["bootstrap"]["command"][0]
    written = re.search(r'echo "(/dns4/[^"]+)" > (\S+)', step)
    assert written, "the bootstrap writes no /dns4 multiaddr"
    assert f"/dns4/bootstrap/tcp/{boot.port}/p2p/" in written.group(1)
    probe = " ".join(services["bootstrap"]["healthcheck"]["test"])
    assert f"({boot.port!r}" in probe.replace("'127.0.0.1', ", ""), "the health check probes another port"
    for name, lines in commands.items():
        if name != "bootstrap":
            assert all(args.initial_peers == [SAMPLE_MADDR] for _, args in lines), name
            assert written.group(2) in services[name]["command"][0], f"{name} reads another file"


def test_compose_stops_slower_than_the_node_drains():
    hard_exit = _hard_exit_seconds()
    for name, service in _compose()["services"].items():
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > hard_exit, f"{name}: stop_grace_period {grace}"
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


def _unit() -> dict[str, list[str]]:
    """The unit's `Key=value` lines, by key (systemd allows a key more than once)."""
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def _env_file() -> str:
    lines = [line for line in (PACKAGING / "systemd" / "volunteer.env").read_text().splitlines()
             if line.startswith("SWARMLLM_VOLUNTEER_ARGS=")]
    assert len(lines) == 1
    return lines[0].partition("=")[2]


def test_systemd_unit_command_parses_with_and_without_the_env_file():
    keys = _unit()
    (exec_start,) = keys["ExecStart"]
    assert "$SWARMLLM_VOLUNTEER_ARGS" in exec_start and "Environment" in keys
    for args_value in ("", _env_file()):
        argv = shlex.split(exec_start.replace("$SWARMLLM_VOLUNTEER_ARGS", args_value))
        assert argv[0] == "/opt/swarmllm/bin/swarmllm"
        args = _parse(argv, f"the unit with SWARMLLM_VOLUNTEER_ARGS={args_value!r}")
        assert args.command == "volunteer"


def test_systemd_unit_drains_before_it_is_killed_and_keeps_its_state():
    keys = _unit()
    (timeout,) = keys["TimeoutStopSec"]
    assert float(timeout.rstrip("s")) > _hard_exit_seconds()
    assert keys["KillSignal"] == ["SIGTERM"]
    assert keys["KillMode"] == ["mixed"], "p2pd must not get SIGTERM before the node has left"
    assert keys["Restart"] == ["on-failure"]
    (state,) = keys["StateDirectory"]
    environment = " ".join(keys["Environment"])
    assert f"SWARMLLM_HOME=%S/{state}" in environment, "the identity would not live in the StateDirectory"
    assert int(keys["Nice"][0]) > 0 and int(keys["CPUWeight"][0]) < 100


def test_launchd_plist_is_valid_and_its_command_parses():
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == PLIST.stem
    args = _parse(plist["ProgramArguments"], "the launchd plist")
    assert args.command == "volunteer"
    assert plist["ExitTimeOut"] > _hard_exit_seconds()
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["EnvironmentVariables"]["SWARMLLM_HOME"].startswith("/")
    assert plist["UserName"] != "root"


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line else "")
                    for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def _layout(path: Path) -> dict:
    instructions = _dockerfile(path)
    found = {name: args for name, args in instructions if name in ("ENTRYPOINT", "CMD", "USER", "VOLUME",
                                                                    "HEALTHCHECK", "STOPSIGNAL", "WORKDIR")}
    env = " ".join(args for name, args in instructions if name == "ENV")
    found["ENV"] = {key: value for key, value in re.findall(r"(SWARMLLM_\w+|PATH)=(\S+)", env)}
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_a_real_command_as_a_user_with_its_state_in_a_volume(path):
    layout = _layout(path)
    entrypoint, cmd = json.loads(layout["ENTRYPOINT"]), json.loads(layout["CMD"])
    assert entrypoint == ["swarmllm"]
    assert _parse(entrypoint + cmd, path.name).command == "volunteer"
    assert layout["USER"] not in ("root", "0")
    assert json.loads(layout["VOLUME"]) == [layout["ENV"]["SWARMLLM_HOME"]]
    assert layout["STOPSIGNAL"] == "SIGTERM"
    defaults = build_parser().parse_args(cmd)
    if not hasattr(defaults, "status_port"):
        pytest.skip("`volunteer --status-port` (the node's status endpoint) is not in this tree yet")
    assert f"http://127.0.0.1:{defaults.status_port}/api/node" in layout["HEALTHCHECK"]


def test_both_images_share_one_layout():
    cpu, cuda = (_layout(path) for path in DOCKERFILES)
    assert cpu == cuda


def test_dockerignore_lets_in_what_the_dockerfiles_copy():
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for path in DOCKERFILES:
        for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
            words = line.split()
            if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                for source in words[1:-1]:
                    source = source.rstrip("/")
                    assert any(source == a or source.startswith(a + "/") for a in allowed), \
                        f"{path.name} copies {source}, which .dockerignore leaves out of the context"
                    assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
