"""A LAN made of network namespaces: "machines" joined by one Ethernet bridge, for mDNS tests.

    with LanBridge.create(["a", "b"]) as lan:          # root only (see `unavailable()`)
        lan.address("a")                                # 10.213.X.1: the machine's LAN address
        lan.command("a", [sys.executable, "-m", ...])   # argv that runs inside machine a
    # every namespace, link and bridge it made is gone here

Each machine is a namespace with loopback and one veth, `lan0`, holding 10.213.X.N/24; the
other ends of the veths hang on a bridge that lives in a namespace of its own (so nothing is
added to the host's namespace, and the host's firewall sees none of this traffic).
Multicast is left as a LAN has it: no default route and no multicast route, so
mDNS must pick its interface itself, as it must on a real network without a gateway.
Names start with `swl` plus a random tag: parallel runs do not collide, and `remove()` deletes
only what this object made. Standard library only.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Optional, Sequence

PREFIX = "swl"


def unavailable() -> Optional[str]:
    """Why namespaces cannot be made here (a sentence), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


@dataclass
class LanBridge:
    tag: str
    machines: dict[str, str] = field(default_factory=dict)   # machine name -> its namespace
    addresses: dict[str, str] = field(default_factory=dict)  # machine name -> its LAN IPv4 address
    subnet: int = 0

    @property
    def switch(self) -> str:
        return f"{PREFIX}{self.tag}-sw"

    @classmethod
    def create(cls, names: Sequence[str]) -> "LanBridge":
        lan = cls(tag=f"{random.randrange(16**4):04x}", subnet=random.randrange(1, 255))
        try:
            _ip("netns", "add", lan.switch)
            _ip("-n", lan.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", lan.switch, "link", "set", "br0", "up")
            for i, name in enumerate(names, start=1):
                lan.add_machine(name, i)
        except BaseException:
            lan.remove()
            raise
        return lan

    def add_machine(self, name: str, host: int) -> None:
        namespace, port = f"{PREFIX}{self.tag}-{name}", f"p{host}"
        _ip("netns", "add", namespace)
        self.machines[name] = namespace
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "lan0", "netns", namespace)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        self.addresses[name] = f"10.213.{self.subnet}.{host}"
        _ip("-n", namespace, "addr", "add", f"{self.addresses[name]}/24", "dev", "lan0")
        _ip("-n", namespace, "link", "set", "lan0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")

    def address(self, name: str) -> str:
        return self.addresses[name]

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside machine `name` (`ip netns exec` execs it: same pid, same signals)."""
        return ["ip", "netns", "exec", self.machines[name], *argv]

    def remove(self) -> None:
        """Delete every namespace this LAN made (their links and the bridge go with them)."""
        for namespace in [*self.machines.values(), self.switch]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.machines.clear()

    def __enter__(self) -> "LanBridge":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
