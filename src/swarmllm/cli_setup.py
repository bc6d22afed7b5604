"""`swarmllm setup --web`: flag handling and printing only (the wizard itself: volunteer/wizard.py).

    swarmllm setup --web [TOKEN] [--initial-peers M] [--host 127.0.0.1] [--port 8641] [--no-browser]
                         [--status-port 8642]

Finds the swarm (the invite token, else --initial-peers, else the local network), serves the wizard
page until Ctrl-C, and opens it in the browser unless --no-browser (headless machines: open the
printed URL elsewhere, e.g. through an SSH tunnel). A node the wizard starts keeps running after it.
"""

from __future__ import annotations

import sys
import threading
import time


def _peers(args) -> list[str]:
    from swarmllm.cli import UsageError, _initial_peers

    if args.token:
        from swarmllm.protocol.invite import InviteError, parse_invite

        try:
            return list(parse_invite(args.token, time.time()).peers)
        except InviteError as e:
            raise UsageError(str(e)) from None
    return _initial_peers(args, may_start=True)


def volunteer_flags() -> frozenset:
    """The options `swarmllm volunteer` takes here: the wizard refuses a cap this version has no flag for."""
    import argparse

    from swarmllm.cli_parser import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(flag for action in commands.choices["volunteer"]._actions for flag in action.option_strings)


def cmd_setup(args) -> int:
    from swarmllm.cli import UsageError, _LOOPBACK_HOSTS

    if not args.web:
        raise UsageError("the setup wizard is a web page: run `swarmllm setup --web` (add --no-browser on a machine "
                         "without one), or `swarmllm volunteer --dry-run` for the same plan in the terminal")
    import uvicorn

    from swarmllm.volunteer.wizard import Wizard, create_app

    extra = (["--no-lan"] if args.no_lan else []) + (["--host", args.node_host] if args.node_host else []) \
        + (["--name", args.name] if args.name else [])
    wizard = Wizard(_peers(args), status_port=args.status_port, extra_args=extra, volunteer_flags=volunteer_flags())
    local = args.host in _LOOPBACK_HOSTS or args.host.startswith("127.")
    if not local:
        print(f"warning: the wizard listens on {args.host}: anyone who can reach this port can start a node here",
              file=sys.stderr, flush=True)
    url = f"http://{'127.0.0.1' if local or args.host == '0.0.0.0' else args.host}:{args.port}/"
    config = uvicorn.Config(create_app(wizard, allow_any_host=not local), host=args.host, port=args.port,
                            log_level="warning", proxy_headers=False)
    server = uvicorn.Server(config)
    print(f"setup wizard: {url} (Ctrl-C closes it; a node it starts keeps running)", flush=True)
    if not args.no_browser:
        def open_when_up() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.1)
            if server.started:
                import webbrowser

                webbrowser.open(url)
        threading.Thread(target=open_when_up, daemon=True).start()
    server.run()
    return 0
