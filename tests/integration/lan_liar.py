"""A liar on the LAN: advertises `_swarmllm._tcp` services whose TXT records are wrong, for
tests/integration/test_lan_discovery.py. Talks zeroconf directly (it is a test tool, not part
of the package), with TXT rdata written byte for byte so that broken encodings reach the wire.

    python lan_liar.py LAN_IP REAL_PEER_ID

Services (instance name: what it is):
  liar-garbage      TXT of random bytes, length prefixes running past the end
  liar-wrong-id     a0's /p2p/ is not the TXT's id
  liar-loopback     only a loopback address
  liar-v2           a format version this one does not know
  liar-impostor     REAL_PEER_ID with an address nobody listens on (a valid record: a hint to dial)
  liar-elsewhere    a valid peer of swarm "elsewhere" (so a test can see the liar was heard)
Prints a `swarmllm-ready` line once all are registered, then waits for SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_swarmllm._tcp.local."
LIAR = "12D3KooWBLnZLh6ZYb4Gq9b73zyunFaSwkFU2NNRGk45HkB6FtSh"
IMPOSTOR_PORT = 9


def txt(*strings: str) -> bytes:
    return b"".join(bytes([len(s)]) + s.encode() for s in strings)


def records(ip: str, real: str) -> dict[str, bytes]:
    net = ip.rsplit(".", 1)[0]
    rng = random.Random(1)
    garbage = bytes([200]) + bytes(rng.randrange(256) for _ in range(60))
    valid = ("v=1", f"id={LIAR}", "swarm=default", "role=server")
    return {
        "liar-garbage": garbage,
        "liar-wrong-id": txt(*valid, f"a0=/ip4/{ip}/tcp/4001/p2p/{real}"),
        "liar-loopback": txt(*valid, f"a0=/ip4/127.0.0.1/tcp/4001/p2p/{LIAR}"),
        "liar-v2": txt("v=2", *valid[1:], f"a0=/ip4/{ip}/tcp/4001/p2p/{LIAR}"),
        "liar-impostor": txt("v=1", f"id={real}", "swarm=default", "role=bootstrap",
                             f"a0=/ip4/{net}.99/tcp/{IMPOSTOR_PORT}/p2p/{real}"),
        "liar-elsewhere": txt("v=1", f"id={LIAR}", "swarm=elsewhere", "role=server",
                              f"a0=/ip4/{ip}/tcp/4001/p2p/{LIAR}"),
    }


async def main(ip: str, real: str) -> None:
    zc = AsyncZeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    for name, text in records(ip, real).items():
        info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=4001, properties=text,
                                parsed_addresses=[ip], server=f"{name}.local.")
        await zc.async_register_service(info, cooperating_responders=True)
    print("swarmllm-ready " + json.dumps({"role": "lan-liar", "services": list(records(ip, real))}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await zc.async_close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
