"""FastAPI app: OpenAI-compatible API, swarm status API, chat page and dashboard.

Routes:
  POST /v1/chat/completions, POST /v1/completions   (stream or not), GET /v1/models
  GET /api/swarm, GET /api/swarm/stream (SSE)        (dashboard data, usable by scripts)
  GET /, GET /dashboard, /assets/*                   (built React pages)
Every error is OpenAI's error JSON with the right status: 400 bad request, 404 unknown
model, 413 body too large, 429 rate limited (Retry-After), 503 swarm unavailable or
saturated (Retry-After). Nothing a client sends produces a 500.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from swarmllm.client.generation import GenerationResult, PromptTooLongError, UnknownModelError
from swarmllm.client.swarm_client import SwarmClient
from swarmllm.gateway.limits import Admission, RateLimiter, SaturatedError
from swarmllm.gateway.schemas import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChunkDelta, Completion, CompletionChunk, CompletionRequest, ErrorBody, ErrorResponse, ModelCard, ModelList,
    RouteHop, SwarmInfo, TextChoice, Usage,
)
from swarmllm.gateway.service import GenerationService, PreparedGeneration
from swarmllm.gateway.swarm_status import SwarmStatus
from swarmllm.protocol import SwarmError

STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class GatewaySettings:
    requests_per_minute: int = 60
    tokens_per_minute: int = 40_000
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_active: int = 8           # generations running at once
    max_queue: int = 16           # generations waiting for a slot; more -> 503
    status_period: float = 2.0
    ring: bool = True             # ring decoding when the chain offers it (client/ring.py)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: Optional[str] = None,
                 retry_after: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.retry_after = status, message, type_, code, retry_after


def _error_response(status: int, message: str, type_: str, code: Optional[str] = None,
                    retry_after: Optional[str] = None) -> JSONResponse:
    headers = {"Retry-After": retry_after} if retry_after else None
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 404, 413, 429, 503)}


def create_app(client: SwarmClient, settings: GatewaySettings = GatewaySettings()) -> FastAPI:
    service = GenerationService(client, settings.max_prompt_tokens, settings.max_new_tokens, ring=settings.ring)
    status = SwarmStatus(client, lambda: service.tokens_generated, period=settings.status_period)
    limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
    admission = Admission(settings.max_active, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(status.run())
        yield
        task.cancel()

    app = FastAPI(title="swarmllm gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over a swarmllm swarm.")
    app.state.service, app.state.status, app.state.admission = service, status, admission

    # --- errors -------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error_response(e.status, e.message, e.type, e.code, e.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _error_response(400, "the request body is not valid JSON", "invalid_request_error", "invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error_response(400, f"invalid request: {where}: {first.get('msg')}", "invalid_request_error",
                               "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return _error_response(e.status_code, str(e.detail), "invalid_request_error")

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return _error_response(413, f"request body over {settings.max_body_bytes} bytes", "invalid_request_error",
                                   "body_too_large")
        return await call_next(request)

    # --- OpenAI API ---------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in status.complete_models()])

    async def _prepare(request: Request, body, messages, prompt):
        try:
            job = await asyncio.to_thread(service.prepare, body.model, messages, prompt, max_tokens=body.max_tokens,
                                          temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                                          stop=body.stop or [])
        except UnknownModelError as e:
            raise ApiError(404, str(e), "invalid_request_error", "model_not_found") from None
        except PromptTooLongError as e:
            raise ApiError(400, str(e), "invalid_request_error", "context_length_exceeded") from None
        client_key = request.client.host if request.client else "unknown"
        wait = limiter.check(client_key, job.budget_tokens)
        if wait:
            raise ApiError(429, f"rate limit reached for {client_key}: at most {settings.requests_per_minute} "
                                f"requests and {settings.tokens_per_minute} tokens per minute",
                           "rate_limit_exceeded", "rate_limit_exceeded", RateLimiter.retry_after(wait))
        return job

    async def _run(request: Request, body, messages=None, prompt=None, chat: bool = True):
        job = await _prepare(request, body, messages, prompt)
        try:
            await admission.acquire()
        except SaturatedError as e:
            raise ApiError(503, str(e), "server_error", "saturated", "5") from None
        try:
            await asyncio.to_thread(service.open, job)
        except (SwarmError, ConnectionError) as e:
            admission.release()
            raise ApiError(503, f"the swarm cannot serve {body.model} right now: {e}", "server_error",
                           "swarm_unavailable", "5") from None
        except BaseException:
            admission.release()
            raise
        cancel = threading.Event()
        completion_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        deltas = service.stream(job, cancel)

        async def release():
            cancel.set()
            admission.release()

        if body.stream:
            return StreamingResponse(_sse(completion_id, body.model, chat, deltas, job, release),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            async for _ in deltas:
                pass
        except (SwarmError, ConnectionError) as e:
            raise ApiError(503, f"the swarm failed during generation: {e}", "server_error", "swarm_failed") from None
        finally:
            await release()
        return _full_response(completion_id, body.model, chat, job.result)

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        return await _run(request, body, messages=[m.model_dump() for m in body.messages], chat=True)

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(request: Request, body: CompletionRequest):
        return await _run(request, body, prompt=body.prompt, chat=False)

    # --- swarm status -----------------------------------------------------------------
    @app.get("/api/swarm")
    async def swarm_status() -> dict:
        return status.snapshot

    @app.get("/api/swarm/stream")
    async def swarm_stream(request: Request):
        async def events():
            yield f"data: {json.dumps(status.snapshot)}\n\n"
            while not await request.is_disconnected():
                try:
                    await asyncio.wait_for(status.changed.wait(), timeout=15)
                    yield f"data: {json.dumps(status.snapshot)}\n\n"
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # --- pages ------------------------------------------------------------------------
    def _page(name: str):
        path = STATIC_DIR / name
        if not path.exists():
            path = STATIC_DIR / "index.html"
        if not path.exists():
            raise ApiError(404, "the web pages are not built; run `npm run build` in web/", "invalid_request_error")
        return FileResponse(path)

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return _page("index.html")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page():
        return _page("dashboard.html")

    if (STATIC_DIR / "assets").is_dir():
        app.mount("/assets", StaticFiles(directory=STATIC_DIR / "assets"), name="assets")
    return app


def _swarm_info(result: GenerationResult) -> SwarmInfo:
    return SwarmInfo(route=[RouteHop(peer_id=h.peer_id, start=h.start, end=h.end) for h in result.route],
                     tokens_per_second=result.timings.decode_tokens_per_s, time_to_first_token=result.timings.ttft_s,
                     completion_tokens=result.generated_tokens, ring=result.decoding == "ring",
                     decoding=result.decoding)


def _usage(result: GenerationResult) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.generated_tokens,
                 total_tokens=result.prompt_tokens + result.generated_tokens)


def _event(chunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def _text_chunk(completion_id: str, model: str, chat: bool, text: Optional[str], finish: Optional[str] = None,
                role: bool = False):
    common = {"id": completion_id, "created": int(time.time()), "model": model}
    if chat:
        delta = ChunkDelta(role="assistant", content="") if role else ChunkDelta(content=text)
        return ChatCompletionChunk(choices=[ChatChunkChoice(delta=delta, finish_reason=finish)], **common)
    return CompletionChunk(choices=[TextChoice(text=text or "", finish_reason=finish)], **common)


async def _sse(completion_id, model, chat, deltas, job: PreparedGeneration, release):
    try:
        if chat:
            yield _event(_text_chunk(completion_id, model, chat, None, role=True))
        async for delta in deltas:
            if delta.text:
                yield _event(_text_chunk(completion_id, model, chat, delta.text))
        final = _text_chunk(completion_id, model, chat, None, job.result.finish_reason)
        final.usage, final.swarmllm = _usage(job.result), _swarm_info(job.result)
        yield _event(final)
    except (SwarmError, ConnectionError) as e:
        error = ErrorResponse(error=ErrorBody(message=f"the swarm failed during generation: {e}", type="server_error",
                                              code="swarm_failed"))
        yield f"data: {error.model_dump_json()}\n\n"
    finally:
        await release()
    yield "data: [DONE]\n\n"


def _full_response(completion_id: str, model: str, chat: bool, result: GenerationResult) -> dict:
    common = {"id": completion_id, "created": int(time.time()), "model": model, "usage": _usage(result),
              "swarmllm": _swarm_info(result)}
    if chat:
        reply = ChatCompletion(choices=[ChatChoice(message=AssistantMessage(content=result.text),
                                                   finish_reason=result.finish_reason)], **common)
    else:
        reply = Completion(choices=[TextChoice(text=result.text, finish_reason=result.finish_reason)], **common)
    return reply.model_dump()
