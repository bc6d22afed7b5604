"""FastAPI app: OpenAI-compatible API, swarm status API, chat page and dashboard.

Routes:
  POST /v1/chat/completions, POST /v1/completions   (stream or not), GET /v1/models
  GET /api/swarm, GET /api/swarm/stream (SSE)        (dashboard data, usable by scripts)
  GET /, GET /dashboard, /assets/*                   (built React pages)
Every error is OpenAI's error JSON with the right status: 400 bad request, 401 missing or
wrong API key, 404 unknown model, 413 body too large, 429 rate limited or too many requests
of one client at once (Retry-After), 503 swarm unavailable or saturated (Retry-After).
Nothing a client sends produces a 500.

A generation request passes, in order (cheapest first, so refusing costs little):
  body size (body_limit.py, on the stream) -> API key (api_keys.py; 401) -> who is asking
  (clients.py: the peer, or a trusted proxy's forwarded address; IPv6 by /64) -> the
  declared size against the client's rate limit (characters and max_tokens; 429) -> the
  model: a catalog name the swarm serves, never a path (404 with the usable list) -> the
  client's concurrency cap (429) -> tokenizing, then the real token count charged (429) ->
  the global admission queue (503) -> the swarm.
A client that disconnects stops its generation, streaming or not: the session is closed
on every server within a token (disconnects.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from swarmllm.client.credit_ledger import CreditLedger
from swarmllm.client.generation import (
    SAMPLING_OPTIONS, GenerationResult, PromptTooLongError, UnknownModelError, list_catalog,
)
from swarmllm.client.routing import PriceUnavailableError
from swarmllm.client.swarm_client import OutsideRadiusError, SwarmClient
from swarmllm.client.verification import VerificationError
from swarmllm.gateway.api_keys import ApiKeys, bearer_token
from swarmllm.gateway.body_limit import BodyLimit, JsonByDefault
from swarmllm.gateway.credit_links import CreditLinks
from swarmllm.gateway.free_tier import FreeTierPolicy, admission_priority, contributor_limits
from swarmllm.gateway.clients import IPNetwork, address_key, client_address, forwarded_chain
from swarmllm.gateway.demand import DemandCounter
from swarmllm.gateway.disconnects import ReleasingStream, disconnected_before, generate_unless_disconnected
from swarmllm.gateway.limits import (
    Admission, ClientBusyError, ClientSlots, Limits, RateLimiter, SaturatedError, Ticket, declared_tokens,
)
from swarmllm.gateway.schemas import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatLogprobs, ChunkDelta, Completion, CompletionChunk, CompletionRequest, ErrorBody,
    ErrorResponse, ModelCard, ModelList, RouteHop, SwarmInfo, TextChoice, TextLogprobs, TokenLogprob, TopLogprob,
    Usage, VerificationInfo,
)
from swarmllm.gateway.service import GenerationService, PreparedGeneration
from swarmllm.gateway.swarm_status import SwarmStatus
from swarmllm.protocol import SwarmError
from swarmllm.protocol.credits import api_key_digest

STATIC_DIR = Path(__file__).parent / "static"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewaySettings:
    requests_per_minute: int = 60  # per client (address, or API key without its own limit)
    tokens_per_minute: int = 40_000
    max_per_client: int = 4        # requests of one client in flight at once (tokenizing, queued or running)
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_active: int = 8           # generations running at once
    max_queue: int = 16           # generations waiting for a slot; more -> 503
    status_period: float = 2.0
    ring: bool = True             # ring decoding when the chain offers it (client/ring.py)
    verify: str = "sample"        # requests' verification mode unless they ask (client/verification.py)
    radius: str = "public"        # requests' trust radius unless they ask (client/radius.py)
    lite: bool = False            # hold no weights: tokenizers from the servers, ring decoding (client/lite.py)
    trusted_proxies: tuple[IPNetwork, ...] = ()  # peers whose forwarding header names the client
    forwarded_header: str = "x-forwarded-for"    # the one header they write: "x-forwarded-for" or "forwarded"
    api_keys: Optional[ApiKeys] = None           # None: no keys, everyone is limited per address
    allow_anonymous: bool = False                # with api_keys: let requests without a key in (per address)
    limiter_max_keys: int = 50_000               # clients the rate limiter remembers at most
    credit_ledger: Optional[CreditLedger] = None  # the free tier (free_tier.py): recent credits of linked nodes
    credit_links: Optional[CreditLinks] = None    # which keys speak for which nodes (credit_links.py)
    free_tier: FreeTierPolicy = FreeTierPolicy()  # how much more a contributor gets (free_tier.py)
    demand_period: float = 5.0                   # s between publications of the demand seen per model (0: never)
    initial_peers: tuple[str, ...] = ()          # where the gateway entered the swarm: the dashboard's join command

    @property
    def default_limits(self) -> Limits:
        return Limits(self.requests_per_minute, self.tokens_per_minute, self.max_per_client)


@dataclass(frozen=True)
class Caller:
    """Who a request is charged to: a limits key ('ip:…' or 'key:…'), for messages a label, and its limits."""

    key: str
    label: str
    limits: Limits
    priority: float = 0.0          # admission order (free_tier.py): recent verified contribution, 0 anonymous
    key_digest: Optional[str] = None  # a linked key's digest, whose spending the ledger records


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: Optional[str] = None,
                 retry_after: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.headers = {**(headers or {}), **({"Retry-After": retry_after} if retry_after else {})}


def _error_response(status: int, message: str, type_: str, code: Optional[str] = None,
                    headers: Optional[dict] = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 503)}


def _rate_limited(caller: Caller, wait: float) -> ApiError:
    return ApiError(429, f"rate limit reached for {caller.label}: at most {caller.limits.requests_per_minute} "
                         f"requests and {caller.limits.tokens_per_minute} tokens per minute",
                    "rate_limit_exceeded", "rate_limit_exceeded", RateLimiter.retry_after(wait))


def create_app(client: SwarmClient, settings: GatewaySettings = GatewaySettings()) -> FastAPI:
    service = GenerationService(client, settings.max_prompt_tokens, settings.max_new_tokens, ring=settings.ring,
                                max_active=settings.max_active, verify=settings.verify, radius=settings.radius,
                                lite=settings.lite)
    catalog = set(list_catalog())
    ledger = settings.credit_ledger
    status = SwarmStatus(client, lambda: service.tokens_generated, period=settings.status_period,
                         demand_models=sorted(catalog), credits_of=ledger.totals if ledger is not None else None,
                         chains_of=service.active_chains, initial_peers=settings.initial_peers)
    limiter = RateLimiter(max_keys=settings.limiter_max_keys)
    slots = ClientSlots()
    admission = Admission(settings.max_active, settings.max_queue)
    demand = DemandCounter()

    async def publish_demand() -> None:
        while True:
            await asyncio.sleep(settings.demand_period)
            try:
                await asyncio.to_thread(client.publish_demand, demand.rates(), demand.window)
            except Exception as e:  # the DHT being briefly unreachable must not stop the gateway
                logger.warning("publishing the demand failed: %s", e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = [asyncio.create_task(status.run())]
        if settings.demand_period > 0:
            tasks.append(asyncio.create_task(publish_demand()))
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="swarmllm gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over a swarmllm swarm.")
    app.state.service, app.state.status, app.state.admission = service, status, admission
    app.state.limiter, app.state.slots = limiter, slots
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(JsonByDefault)

    # --- errors -------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error_response(e.status, e.message, e.type, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        # No Content-Type: FastAPI reads the body as JSON (as OpenAI's API does). Another type: the body was
        # never parsed, so say what to send rather than which field "is missing".
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and not (kind == "application/json" or kind.endswith("+json")):
            return _error_response(415, f"the body was sent as {kind}; send Content-Type: application/json with a "
                                        "JSON body", "invalid_request_error", "unsupported_media_type")
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _error_response(400, "the request body is not valid JSON", "invalid_request_error", "invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error_response(400, f"invalid request: {where}: {first.get('msg')}", "invalid_request_error",
                               "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return _error_response(e.status_code, str(e.detail), "invalid_request_error")

    # --- who is asking ------------------------------------------------------------------
    async def caller(request: Request) -> Caller:
        """The request's caller (a FastAPI dependency: it runs before the body is validated)."""
        token = bearer_token(request.headers.get("authorization")) if settings.api_keys is not None else None
        if token is not None:
            holder = settings.api_keys.lookup(token, settings.default_limits)
            if holder is None:
                raise ApiError(401, "the API key is not valid; check the key you were given", "invalid_request_error",
                               "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return contributor(Caller(holder.client_key, f"API key {holder.name!r}", holder.limits), token)
        if settings.api_keys is not None and not settings.allow_anonymous:
            raise ApiError(401, "this gateway needs an API key: send it as `Authorization: Bearer KEY`",
                           "invalid_request_error", "missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        chain = forwarded_chain(settings.forwarded_header, request.headers.getlist(settings.forwarded_header)) \
            if settings.trusted_proxies else []
        address = client_address(request.client.host if request.client else None, chain, settings.trusted_proxies)
        return Caller(address_key(address), address, settings.default_limits)

    def contributor(who: Caller, token: str) -> Caller:
        """A key's caller with the free tier applied: more limits and priority for linked contributing nodes."""
        if settings.credit_ledger is None or settings.credit_links is None:
            return who
        digest = api_key_digest(token)
        nodes = settings.credit_links.nodes_for(digest)
        if not nodes:
            return who
        recent = settings.credit_ledger.credits_since(nodes, time.time() - settings.free_tier.window)
        return Caller(who.key, who.label, contributor_limits(who.limits, recent, settings.free_tier),
                      admission_priority(recent), digest)

    def usable_models() -> list[str]:
        return [m for m in status.complete_models() if m in catalog]

    def check_model(model: str) -> None:
        """404 unless `model` is a catalog name some node serves; the string is only compared, never opened."""
        if model in catalog and model in status.served_models():
            return
        if model in catalog and not status.ready:
            raise ApiError(503, "the gateway has not read the swarm's models yet; retry in a few seconds",
                           "server_error", "swarm_unavailable", "2")
        names = ", ".join(usable_models()) or "none right now"
        raise ApiError(404, f"the model {model!r} is not served here; models you can use: {names}",
                       "invalid_request_error", "model_not_found")

    # --- OpenAI API ---------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in usable_models()])

    def _admit(who: Caller, body, characters: int) -> Ticket:
        """The cheap checks, before any tokenizing: max_tokens, the declared size, the model."""
        if body.max_tokens is not None and body.max_tokens > settings.max_new_tokens:
            raise ApiError(400, f"max_tokens is {body.max_tokens}; this gateway allows at most "
                                f"{settings.max_new_tokens}", "invalid_request_error", "context_length_exceeded")
        declared = declared_tokens(characters, body.max_tokens, settings.max_new_tokens) * body.n
        ticket = limiter.admit(who.key, declared, who.limits)
        if not isinstance(ticket, Ticket):
            raise _rate_limited(who, ticket)
        if body.model in catalog:  # counted even when nobody serves it yet: that demand brings nodes to it
            demand.arrived(body.model, declared)
        check_model(body.model)
        return ticket

    async def _prepare(who: Caller, ticket: Ticket, body, messages, prompt) -> list[PreparedGeneration]:
        """The request's n choices (each its own generation: seed, seed + 1, ...), tokenized once."""
        sampling = {name: getattr(body, name) for name in SAMPLING_OPTIONS}
        try:
            job = await asyncio.to_thread(service.prepare, body.model, messages, prompt, max_tokens=body.max_tokens,
                                          sampling=sampling, seed=body.seed, stop=body.stop or [], verify=body.verify,
                                          radius=body.radius, privacy=body.privacy, max_price=body.max_price,
                                          logprobs=body.logprob_count)
        except UnknownModelError as e:
            raise ApiError(404, f"the gateway cannot load {body.model!r}: {e}", "invalid_request_error",
                           "model_not_found") from None
        except PromptTooLongError as e:
            raise ApiError(400, str(e), "invalid_request_error", "context_length_exceeded") from None
        except ValueError as e:  # a combination of sampling options that cannot be (each was in range)
            raise ApiError(400, str(e), "invalid_request_error", "invalid_value") from None
        wait = limiter.settle(ticket, job.budget_tokens * body.n, who.limits)
        if wait:
            raise _rate_limited(who, wait)
        if body.user:
            logger.info("request for %s from %s (user %r, n=%d)", body.model, who.label, body.user, body.n)
        return [job] + [job.variant(i) for i in range(1, body.n)]

    async def _queue(request: Request, priority: float = 0.0) -> None:
        """A slot of the global admission queue; given up if the client leaves while waiting."""
        waiting = asyncio.ensure_future(admission.acquire(priority))
        try:
            if await disconnected_before(request, waiting):
                raise ApiError(400, "the client disconnected", "invalid_request_error", "client_disconnected")
            waiting.result()
        except SaturatedError as e:
            raise ApiError(503, str(e), "server_error", "saturated", "5") from None
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, SaturatedError):
                    await waiting
                    admission.release()  # it got the slot as it was cancelled

    async def _run(request: Request, who: Caller, body, messages=None, prompt=None, chat: bool = True):
        characters = sum(len(m["content"]) for m in messages) if messages is not None else len(prompt)
        ticket = _admit(who, body, characters)
        try:
            slots.take(who.key, who.limits.concurrency)
        except ClientBusyError as e:
            raise ApiError(429, f"{e} ({who.label})", "rate_limit_exceeded", "too_many_concurrent_requests",
                           "1") from None
        demand.started(body.model)
        held = [lambda: demand.finished(body.model), lambda: slots.release(who.key)]  # given back last taken
        # first, each exactly once

        async def release() -> None:
            while held:
                held.pop()()

        streaming = False
        try:
            jobs = await _prepare(who, ticket, body, messages, prompt)
            if who.key_digest is not None:  # a linked key's spending (docs/free-tier.md)
                settings.credit_ledger.record_spending(who.key_digest, sum(j.budget_tokens for j in jobs), time.time())
            await _queue(request, who.priority)
            held.append(admission.release)
            # The choices run one after another in the request's admission slot: n costs its caller time, not
            # the swarm n parallel sessions. Each opens its session just before it runs; the first one opens here,
            # so that a swarm that cannot serve is a clean HTTP error, not a broken stream.
            await _open(body, jobs[0])
            cancels = [threading.Event() for _ in jobs]  # one per choice: a stream's end sets its own
            held += [*(c.set for c in cancels), *(lambda j=j: service.abandon(j) for j in jobs)]
            completion_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            if body.stream:
                streaming = True  # from here the response gives everything back when it ends, however it ends
                include_usage = body.stream_options is not None and body.stream_options.include_usage
                return ReleasingStream(_sse(completion_id, body, chat, jobs, cancels, release, include_usage),
                                       release, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            for index, (job, cancel) in enumerate(zip(jobs, cancels)):
                if index:
                    if await request.is_disconnected():  # the client left: the other choices are not run
                        break
                    await _open(body, job)
                try:
                    await generate_unless_disconnected(request, service.stream(job, cancel), cancel)
                except (SwarmError, ConnectionError) as e:
                    raise ApiError(503, f"the swarm failed during generation: {e}", "server_error",
                                   "swarm_failed") from None
            return _full_response(completion_id, body.model, chat, jobs)
        finally:
            if not streaming:
                await release()

    async def _open(body, job: PreparedGeneration) -> None:
        try:
            await asyncio.to_thread(service.open, job)
        except VerificationError as e:  # the request's verify mode cannot be met by this swarm
            raise ApiError(400, f"{e}; ask for \"verify\": \"sample\" or \"off\"", "invalid_request_error",
                           "verification_unavailable") from None
        except OutsideRadiusError as e:  # the request's radius cannot serve the model
            raise ApiError(400, str(e), "invalid_request_error", "radius_unavailable") from None
        except PriceUnavailableError as e:  # no chain under the request's max_price: the message names the cheapest
            raise ApiError(400, str(e), "invalid_request_error", e.code) from None
        except (SwarmError, ConnectionError) as e:
            raise ApiError(503, f"the swarm cannot serve {body.model} right now: {e}", "server_error",
                           "swarm_unavailable", "5") from None

    async def _sse(completion_id, body, chat, jobs: list[PreparedGeneration], cancels, release, include_usage: bool):
        model = body.model
        try:
            for index, (job, cancel) in enumerate(zip(jobs, cancels)):
                if index:
                    try:
                        await _open(body, job)
                    except ApiError as e:
                        raise SwarmError(e.message) from None
                if chat:
                    yield _event(_text_chunk(completion_id, model, chat, None, role=True, index=index))
                pending: list = []  # log-probabilities of tokens whose text is held back (a stop string may follow)
                offset = 0  # characters of this choice's text sent so far (the legacy shape's text_offset)
                async for delta in service.stream(job, cancel):
                    if delta.retracted_chars:  # a stream cannot take text back: end it, saying why
                        raise SwarmError("text already sent was computed from wrong outputs of a server that "
                                         "verification has now caught and banned; the text above is not reliable, "
                                         "retry the request")
                    if delta.logprob is not None:
                        pending.append(delta.logprob)
                    if delta.text:
                        yield _event(_text_chunk(completion_id, model, chat, delta.text, index=index,
                                                 logprobs=_logprobs(chat, pending, offset)))
                        pending, offset = [], offset + len(delta.text)
                final = _text_chunk(completion_id, model, chat, None, job.result.finish_reason, index=index,
                                    logprobs=_logprobs(chat, pending, offset))
                final.usage, final.swarmllm = _usage([job]), _swarm_info(job.result)
                yield _event(final)
            if include_usage:
                yield _event(_usage_chunk(completion_id, model, chat, jobs))
        except (SwarmError, ConnectionError) as e:
            error = ErrorResponse(error=ErrorBody(message=f"the swarm failed during generation: {e}",
                                                  type="server_error", code="swarm_failed"))
            yield f"data: {error.model_dump_json()}\n\n"
        finally:
            await release()
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(request: Request, body: ChatCompletionRequest, who: Caller = Depends(caller)):
        return await _run(request, who, body, messages=[m.model_dump() for m in body.messages], chat=True)

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(request: Request, body: CompletionRequest, who: Caller = Depends(caller)):
        return await _run(request, who, body, prompt=body.prompt, chat=False)

    # --- swarm status -----------------------------------------------------------------
    @app.get("/api/swarm")
    async def swarm_status() -> dict:
        return {**status.snapshot, "gateway": {"active": admission.active, "waiting": admission.waiting,
                                               "clients_in_flight": len(slots), "clients_remembered": len(limiter),
                                               "tokens_generated": service.tokens_generated,
                                               "cancelled": service.cancelled}}

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
    v = result.verification
    return SwarmInfo(route=[RouteHop(peer_id=h.peer_id, start=h.start, end=h.end) for h in result.route],
                     tokens_per_second=result.timings.decode_tokens_per_s, time_to_first_token=result.timings.ttft_s,
                     completion_tokens=result.generated_tokens, ring=result.decoding == "ring",
                     decoding=result.decoding, verification=VerificationInfo(
                         mode=v.mode, steps_checked=v.steps_checked, mismatches=v.mismatches, banned=list(v.banned),
                         retracted_tokens=v.retracted_tokens, unverifiable=list(v.unverifiable)))


def _usage(jobs: list[PreparedGeneration]) -> Usage:
    """The request's usage: the prompt once, every choice's completion tokens."""
    results = [job.result for job in jobs if job.result is not None]
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.generated_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _event(chunk) -> str:
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def _top(entry) -> list[TopLogprob]:
    return [TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in entry.top]


def _logprobs(chat: bool, entries: list, offset: int = 0):
    """OpenAI's logprobs object for `entries` (TokenLogprob): chat's list of tokens or the legacy parallel lists."""
    if not entries:
        return None
    if chat:
        return ChatLogprobs(content=[TokenLogprob(token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
                                                  top_logprobs=_top(e)) for e in entries])
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return TextLogprobs(tokens=[e.token for e in entries], token_logprobs=[e.logprob for e in entries],
                        top_logprobs=[dict(e.top) for e in entries], text_offset=offsets)


def _text_chunk(completion_id: str, model: str, chat: bool, text: Optional[str], finish: Optional[str] = None,
                role: bool = False, index: int = 0, logprobs=None):
    common = {"id": completion_id, "created": int(time.time()), "model": model}
    if chat:
        delta = ChunkDelta(role="assistant", content="") if role else ChunkDelta(content=text)
        return ChatCompletionChunk(choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish,
                                                            logprobs=logprobs)], **common)
    return CompletionChunk(choices=[TextChoice(index=index, text=text or "", finish_reason=finish,
                                               logprobs=logprobs)], **common)


def _usage_chunk(completion_id: str, model: str, chat: bool, jobs: list[PreparedGeneration]):
    """stream_options.include_usage: the last chunk, with no choices and the whole request's usage."""
    common = {"id": completion_id, "created": int(time.time()), "model": model, "usage": _usage(jobs)}
    return ChatCompletionChunk(choices=[], **common) if chat else CompletionChunk(choices=[], **common)


def _full_response(completion_id: str, model: str, chat: bool, jobs: list[PreparedGeneration]) -> dict:
    done = [job for job in jobs if job.result is not None]
    common = {"id": completion_id, "created": int(time.time()), "model": model, "usage": _usage(done),
              "swarmllm": _swarm_info(done[0].result)}
    logprobs = [_logprobs(chat, job.logprobs) for job in done]
    if chat:
        reply = ChatCompletion(choices=[ChatChoice(index=i, message=AssistantMessage(content=job.result.text),
                                                   finish_reason=job.result.finish_reason, logprobs=logprobs[i])
                                        for i, job in enumerate(done)], **common)
    else:
        reply = Completion(choices=[TextChoice(index=i, text=job.result.text, finish_reason=job.result.finish_reason,
                                               logprobs=logprobs[i]) for i, job in enumerate(done)], **common)
    return reply.model_dump(exclude_none=False)
