"""A small internet in network namespaces: a public segment and homes behind NAT routers (root only).

`NatLab(prefix, homes=2)` builds, with `ip` and Debian's nftables:

    <prefix>-pub        the public segment: a bridge "br0" (PUBLIC_NET .254)
    <prefix>-pub<k>     a public machine at PUBLIC_NET .k on the bridge (add_public_host; k = 1, 2, ...)
    <prefix>-nat<i>     home i's router: PUBLIC_NET .(100+i) on the bridge, 192.168.<50+i>.1 inside;
                        it masquerades the home's outbound traffic and drops every inbound connection
                        the home did not open (forward policy drop, conntrack established/related only;
                        its own input from the public side too), as a home router does
    <prefix>-home<i>    a machine at 192.168.<50+i>.2 behind it (default route via the router)

`lab.exec(ns)` is the argv prefix that runs a command in a namespace. `close()` deletes every
namespace (and with them their links and nft tables). The address ranges are private ones, so
nothing here can route anywhere else, and libp2p's AutoNAT/hole punching (which act only on
public addresses) stay idle: what the lab exercises is the direct and the relayed path.
`available()` says whether this machine can build it (root, `ip`, `nft`, namespaces allowed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from swarmllm.harness.processes import ManagedProcess

PUBLIC_NET = "10.77.0"


def _run(*argv: str, input: str | None = None) -> None:
    result = subprocess.run(argv, input=input, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")


def available() -> tuple[bool, str]:
    """(usable, why not)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    probe = f"swprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "exec", probe, "nft", "list", "tables")
    except RuntimeError as e:
        return False, f"cannot use network namespaces here: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


def _router_rules(wan: str, lan: str) -> str:
    return f"""
table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    oifname "{wan}" masquerade
  }}
}}
table ip filter {{
  chain forward_filter {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "{lan}" accept
  }}
  chain input_filter {{
    type filter hook input priority 0; policy accept;
    iifname "{wan}" ct state established,related accept
    iifname "{wan}" drop
  }}
}}
"""


@dataclass
class NatLab:
    prefix: str
    homes: int = 1
    namespaces: list[str] = field(default_factory=list)
    _public_hosts: int = 0

    def __post_init__(self):
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def public(self) -> str:
        return f"{self.prefix}-pub"

    def home(self, i: int) -> str:
        return f"{self.prefix}-home{i}"

    def home_address(self, i: int) -> str:
        return f"192.168.{50 + i}.2"

    def router_address(self, i: int) -> str:
        """Home i's address as the public side sees it (what its router masquerades to)."""
        return f"{PUBLIC_NET}.{100 + i}"

    def add_public_host(self) -> tuple[str, str]:
        """A new machine on the public segment: (its namespace, its address)."""
        self._public_hosts += 1
        k = self._public_hosts
        name, address = f"{self.prefix}-pub{k}", f"{PUBLIC_NET}.{k}"
        self._add(name)
        link, peer = f"{self.prefix}p{k}", f"{self.prefix}pb{k}"
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", link, "netns", name)
        _run("ip", "link", "set", peer, "netns", self.public)
        _run("ip", "-n", self.public, "link", "set", peer, "master", "br0")
        _run("ip", "-n", self.public, "link", "set", peer, "up")
        _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", link)
        _run("ip", "-n", name, "link", "set", link, "up")
        return name, address

    def exec(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def cli(self, namespace: str, *args: str) -> list[str]:
        """argv of `swarmllm ARGS` run in `namespace` (with this interpreter)."""
        return [*self.exec(namespace), sys.executable, "-m", "swarmllm.cli", *args]

    def start(self, namespace: str, name: str, log_dir: Path, env: dict, *args: str) -> ManagedProcess:
        """`swarmllm ARGS` started in `namespace` as a managed child (log: log_dir/NAME.log)."""
        proc = ManagedProcess(name, self.cli(namespace, *args), Path(log_dir) / f"{name}.log")
        proc.start(env)
        return proc

    def _add(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        p = self.prefix
        self._add(self.public)
        _run("ip", "-n", self.public, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.public, "link", "set", "br0", "up")
        _run("ip", "-n", self.public, "addr", "add", f"{PUBLIC_NET}.254/24", "dev", "br0")
        for i in range(1, self.homes + 1):
            router, home = f"{p}-nat{i}", self.home(i)
            self._add(router)
            self._add(home)
            wan, wan_peer, lan, lan_peer = f"{p}w{i}", f"{p}wp{i}", f"{p}l{i}", f"{p}lh{i}"
            _run("ip", "link", "add", wan, "type", "veth", "peer", "name", wan_peer)
            _run("ip", "link", "set", wan, "netns", router)
            _run("ip", "link", "set", wan_peer, "netns", self.public)
            _run("ip", "-n", self.public, "link", "set", wan_peer, "master", "br0")
            _run("ip", "-n", self.public, "link", "set", wan_peer, "up")
            _run("ip", "-n", router, "addr", "add", f"{self.router_address(i)}/24", "dev", wan)
            _run("ip", "-n", router, "link", "set", wan, "up")
            _run("ip", "link", "add", lan, "type", "veth", "peer", "name", lan_peer)
            _run("ip", "link", "set", lan, "netns", router)
            _run("ip", "link", "set", lan_peer, "netns", home)
            _run("ip", "-n", router, "addr", "add", f"192.168.{50 + i}.1/24", "dev", lan)
            _run("ip", "-n", router, "link", "set", lan, "up")
            _run("ip", "-n", home, "addr", "add", f"{self.home_address(i)}/24", "dev", lan_peer)
            _run("ip", "-n", home, "link", "set", lan_peer, "up")
            _run("ip", "-n", home, "route", "add", "default", "via", f"192.168.{50 + i}.1")
            _run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _run("ip", "netns", "exec", router, "nft", "-f", "-", input=_router_rules(wan, lan))

    def close(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()

    def __enter__(self) -> "NatLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
