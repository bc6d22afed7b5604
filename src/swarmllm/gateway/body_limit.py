"""ASGI middleware: request bodies over a size limit get 413, counted on the stream; JSON by default.

`JsonByDefault` reads a POST without a Content-Type as JSON.

A Content-Length over the limit is refused before a byte of the body is read. Otherwise
(chunked bodies, or a Content-Length that lies low) the `http.request` chunks are counted
as they arrive and buffered, never more than `max_bytes` of them: the chunk that crosses
the limit is dropped and answered with 413 in OpenAI's error shape, and the connection is
closed (the rest of the body is never read). A body within the limit is handed to the app
as it came; later `receive()` calls (disconnect detection) go straight to the server.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from starlette.responses import JSONResponse

from swarmllm.gateway.schemas import ErrorBody, ErrorResponse

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _too_large(max_bytes: int) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=f"the request body is over {max_bytes} bytes",
                                         type="invalid_request_error", code="body_too_large"))
    return JSONResponse(body.model_dump(), status_code=413, headers={"Connection": "close"})


class BodyLimit:
    def __init__(self, app: App, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _too_large(self.max_bytes)(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await _too_large(self.max_bytes)(scope, receive, send)
            chunks.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)


class JsonByDefault:
    """A POST with no (or an empty) Content-Type is read as JSON, as OpenAI's API reads it: curl -d and
    some SDKs send none. Any other declared type is left alone (the app answers 415 saying what to send)."""

    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope["headers"] if not (k == b"content-type" and not v.strip())]
            if not any(k == b"content-type" for k, _ in headers):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
