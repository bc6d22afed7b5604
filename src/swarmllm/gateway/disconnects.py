"""A generation's end when its HTTP client leaves: stop it, close its session, give its slots back.

Streaming replies learn of a disconnect from Starlette (its stream is cancelled);
`ReleasingStream` then gives everything back even if the body never started (the body's own
`finally` would not run). A non-streaming request has no such signal while it waits for the
whole reply, so `generate_unless_disconnected` polls `request.is_disconnected()` every
`DISCONNECT_POLL_SECONDS` and sets the generation's cancel event: its worker stops at the
next token and closes the session on every server. `disconnected_before` is the same wait
for anything else (a place in the admission queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from fastapi import Request
from fastapi.responses import StreamingResponse

DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there


class ReleasingStream(StreamingResponse):
    """A streamed reply that gives its slots and session back when it ends, even if it never started
    (a client gone before the first byte: the body's own `finally` would then never run)."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


async def disconnected_before(request: Request, task: asyncio.Future) -> bool:
    """Wait for `task`; True if the HTTP client disconnected first (then `task` is still running)."""
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return False
        if await request.is_disconnected():
            return True


async def _drain(deltas) -> None:
    async with contextlib.aclosing(deltas):
        async for _ in deltas:
            pass


async def generate_unless_disconnected(request: Request, deltas, cancel: threading.Event) -> None:
    """Run a non-streaming generation to its end, or stop it (and close its session) if the client leaves."""
    drain = asyncio.ensure_future(_drain(deltas))
    try:
        if await disconnected_before(request, drain):
            cancel.set()  # the worker stops at the next token and closes the session on every server
        await asyncio.shield(drain)
    finally:
        if not drain.done():  # this handler itself was cancelled (shutdown)
            cancel.set()
            drain.cancel()
            with contextlib.suppress(BaseException):
                await drain
