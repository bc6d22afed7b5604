"""One generation API for every caller: typed options in, one stream of events, a typed result out.

    generator = Generator.swarm("smollm2-135m", client)      # or Generator.local("smollm2-135m")
    ids = generator.model.prompt_ids("Tell me about bees")
    with generator.start(ids, GenerationOptions(sampling=SamplingParams(max_new_tokens=64))) as run:
        for event in run:                                     # GenerationStep: token id, text delta, finish
            print(event.text_delta, end="")
    result = run.result()                                     # GenerationResult: text, ids, route, timings, ...

The CLI, the gateway and the benchmarks all go through `Generator.start` (or its shorthand
`Generator.generate`). `start` opens the swarm session before anything is yielded, so a
missing block or a full swarm is an exception, not a broken stream; the `Generation` it
returns chooses how tokens are produced:
- ring decoding (client/ring.py) when the chain's ends offer it and speculation is off (or
  `ring=True`): the chain's last server samples and feeds the first;
- speculative decoding (`speculative="ngram"` or `"early-exit"`, engine/speculative.py):
  drafts verified k at a time in one traversal of the chain; greedy output unchanged;
- plain decoding otherwise: one traversal per token, sampled here.
All three drive the engine's one loop (engine/generation.py) over a `forward_fn`: locally a
`LocalModel` over all blocks, remotely a session over a chain, so the swarm's output is, by
construction, what the local engine computes, and tests compare them token for token.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Sequence

from swarmllm.client.lite import LiteError, LiteHead
from swarmllm.client.radius import parse_radius
from swarmllm.client.ring import RingDecoder, RingStats
from swarmllm.client.swarm_client import RemoteSession, SwarmClient
from swarmllm.client.verification import VERIFY_MODES
from swarmllm.client.verified_decoding import RewindingDecoder
from swarmllm.engine.generation import PREFILL_CHUNK, Decoder, GenerationStep, iter_generate
from swarmllm.engine.sampling import MAX_TOP_LOGPROBS, SAMPLING_OPTIONS, SamplingParams
from swarmllm.engine.speculative import (
    MAX_DRAFT_TOKENS, DraftLength, NgramDrafter, Speculation, SpeculationStats, early_exit_drafter,
)
from swarmllm.models.catalog import UnknownModelError, list_catalog, recommended_sampling
from swarmllm.protocol import WIRE_DTYPES
from swarmllm.protocol.records import MAX_PRICE
from swarmllm.runtime import ClientModel, LocalModel, PromptTooLongError, load_span

__all__ = [
    "ClientModel", "Generation", "GenerationOptions", "GenerationResult", "GenerationStep", "Generator",
    "LocalModel", "PromptTooLongError", "RouteHop", "SamplingParams", "SPECULATIVE_MODES", "Timings",
    "UnknownModelError", "VerificationReport", "generate_text", "list_catalog", "recommended_sampling",
    "SAMPLING_OPTIONS", "sampling_options",
]

SPECULATIVE_MODES = ("off", "ngram", "early-exit")


def sampling_options(given: Mapping[str, object], model: Optional[str] = None) -> dict[str, object]:
    """SamplingParams keyword arguments: the options `given` that are set (not None), then `model`'s
    recommended values (the catalog's) for the rest (none when model is None); what is left keeps
    SamplingParams' defaults."""
    chosen = {name: given[name] for name in SAMPLING_OPTIONS if given.get(name) is not None}
    return {**{k: v for k, v in recommended_sampling(model).items() if k not in chosen}, **chosen}
DEFAULT_DRAFT_BLOCKS = 8


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate; everything but the prompt. Invalid combinations fail at construction."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_length: Optional[int] = None          # positions to reserve (default: prompt + max_new_tokens)
    wire_dtype: Optional[str] = None          # hidden states between nodes (protocol WIRE_DTYPES); None = lossless
    speculative: str = "off"                  # "off", "ngram" or "early-exit"
    draft_k: int = 8                          # most tokens drafted per round (adapts below it)
    draft_blocks: int = DEFAULT_DRAFT_BLOCKS  # blocks the early-exit drafter runs
    ring: Optional[bool] = None               # None: when the chain offers it and speculation is off
    prefill_chunk: Optional[int] = PREFILL_CHUNK  # prompts longer than this are prefilled in chunks; None = one piece
    routing_seed: Optional[int] = None        # choice among equally good chains (routing.py); None = random
    verify: str = "off"                       # "off", "sample" or "strict": re-compute spans on independent servers
    radius: Optional[str] = None              # trust radius of the chain: "local", "trusted", "public", or with
    # widenings ("trusted+public"); None = any server (client/radius.py)
    privacy: Optional[str] = None             # radius of the chain's ends (token ids, embeddings); None = narrowest
    max_price: Optional[float] = None         # credits per 1,000 tokens the chain may cost in all; None = any
    logprobs: Optional[int] = None            # 0..20: each step carries its token's log-probability and this many
    # alternatives' (the client samples every token then: plain decoding, never a ring or speculation)

    def __post_init__(self) -> None:
        if self.speculative not in SPECULATIVE_MODES:
            raise ValueError(f"unknown speculative mode {self.speculative!r}; use one of {', '.join(SPECULATIVE_MODES)}")
        if not 1 <= self.draft_k <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft_k must be 1..{MAX_DRAFT_TOKENS}, got {self.draft_k}")
        if self.ring and self.speculative != "off":
            raise ValueError("ring decoding and speculative decoding do not combine; choose one")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"unknown verification mode {self.verify!r}; use one of {', '.join(VERIFY_MODES)}")
        for spec in (self.radius, self.privacy):
            if spec is not None:
                parse_radius(spec)  # ValueError naming the bad spec
        if self.verify == "sample" and self.speculative != "off":
            raise ValueError("speculative decoding cannot be replayed after a late conviction yet; use --verify "
                             "strict (every step checked before it is used) or --verify off with speculation")
        if self.max_price is not None and not (0 <= self.max_price <= MAX_PRICE):  # NaN fails too
            raise ValueError(f"max_price must be between 0 and {MAX_PRICE:.0e} credits per 1,000 tokens, got "
                             f"{self.max_price}")
        if self.logprobs is not None:
            if not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
                raise ValueError(f"logprobs must be 0..{MAX_TOP_LOGPROBS}, got {self.logprobs}")
            if self.ring or self.speculative != "off":
                raise ValueError("log-probabilities need the client to sample every token: no ring decoding and no "
                                 "speculative decoding with them")
        if self.wire_dtype is not None and self.wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"unknown wire dtype {self.wire_dtype!r}; use one of {', '.join(WIRE_DTYPES)}")


@dataclass(frozen=True)
class RouteHop:
    """One server of the chain a generation went through: blocks [start, end)."""

    peer_id: str
    start: int
    end: int


@dataclass(frozen=True)
class Timings:
    open_s: float               # opening the session on every server of the chain (0 locally)
    ttft_s: float               # generation start -> first token (prefill + head)
    total_s: float              # generation start -> last token
    decode_tokens_per_s: float  # tokens after the first / time after the first token


@dataclass(frozen=True)
class VerificationReport:
    """What was checked of the servers' work (client/verification.py; "off" checks nothing)."""

    mode: str = "off"
    steps_checked: int = 0                 # server-positions compared with an independent server's
    exact_checks: int = 0                  # ... of them bit for bit (same compute class, same chunks)
    mismatches: int = 0                    # disagreements found (each decided by a third server)
    banned: tuple[str, ...] = ()           # peers convicted of a wrong output during this request
    banned_at: tuple[int, ...] = ()        # ... the position of the wrong output that convicted each
    rewinds: int = 0                       # times generation went back to the last verified position
    retracted_tokens: int = 0              # tokens streamed, then taken back as computed from wrong outputs
    unverifiable: tuple[str, ...] = ()     # spans no independent server could check (sample mode goes on)


@dataclass(frozen=True)
class FailoverSummary:
    peer_ids: tuple[str, ...]      # servers replaced
    code: str                      # why the step failed
    blocks: tuple[int, int]
    seconds: float                 # failure -> retried step done


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]           # sampled ids, EOS included when generation stopped on it
    finish_reason: str             # "stop" or "length"
    prompt_tokens: int
    route: list[RouteHop]          # the chain at the end ([] in-process)
    timings: Timings
    decoding: str                  # "ring", "speculative" or "plain"
    local: bool = False            # in-process (the reference), not through a swarm
    ring: Optional[RingStats] = None
    speculation: Optional[SpeculationStats] = None
    failovers: tuple[FailoverSummary, ...] = ()
    verification: VerificationReport = field(default_factory=VerificationReport)

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)

    def route_text(self) -> str:
        return "local" if self.local else " -> ".join(f"{h.peer_id[-8:]}[{h.start},{h.end})" for h in self.route)

    def to_json(self) -> dict:
        """A JSON-ready dict (what `swarmllm generate --json` prints)."""
        out = asdict(self)
        out["generated_tokens"] = self.generated_tokens
        if self.speculation is not None:
            out["speculation"] = self.speculation.as_dict()
        return out


class Generation:
    """One generation in progress: iterate for `GenerationStep`s, then `result()`.

    Closing it (or leaving its `with` block) early stops the decoder (a ring hears RingStop)
    and closes the session on every server."""

    def __init__(self, model: ClientModel, prompt_ids: Sequence[int], options: GenerationOptions, length: int,
                 forward_fn, decoder: Optional[Decoder], decoding: str, session: Optional[RemoteSession] = None,
                 open_seconds: float = 0.0):
        self.model, self.prompt_ids, self.options, self.length = model, list(prompt_ids), options, length
        self._forward_fn, self._decoder, self.decoding = forward_fn, decoder, decoding
        self._session, self._open_seconds = session, open_seconds
        self.token_ids: list[int] = []
        self.retracted_tokens = 0  # taken back after a late conviction (verified_decoding.py)
        self.text = ""
        self.finish_reason = "length"
        self._started = self._first_at = self._ended = None
        self._closed = False

    @property
    def session(self) -> Optional[RemoteSession]:
        """The swarm session underneath (None in-process)."""
        return self._session

    @property
    def route(self) -> list[RouteHop]:
        if self._session is None:
            return []
        return [RouteHop(link.peer_id, link.start, link.end) for link in self._session.chain]

    def __iter__(self) -> Iterator[GenerationStep]:
        if self._started is not None:
            raise RuntimeError("a Generation can be iterated once")
        self._started = time.perf_counter()
        try:
            for event in iter_generate(self.model.head, self.model.tokenizer, self._forward_fn, self.prompt_ids,
                                       self.options.sampling, self.length, self._decoder, self.options.logprobs):
                if self._first_at is None:
                    self._first_at = time.perf_counter()
                if event.retracted_tokens:
                    self.retracted_tokens += event.retracted_tokens
                    del self.token_ids[-event.retracted_tokens:]
                if event.retracted_chars:
                    self.text = self.text[:len(self.text) - event.retracted_chars]
                self.token_ids.append(event.token_id)
                self.text += event.text_delta
                self.finish_reason = event.finish_reason or self.finish_reason
                yield event
        finally:
            self._ended = time.perf_counter()
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._session is not None:
                self._session.close()

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def result(self) -> GenerationResult:
        started = self._started or time.perf_counter()
        ended = self._ended or time.perf_counter()
        first = self._first_at or ended
        n = len(self.token_ids)
        decode = (n - 1) / (ended - first) if n > 1 and ended > first else 0.0
        ring = self._decoder.stats if isinstance(self._decoder, RingDecoder) else None
        speculation = self._decoder.stats if isinstance(self._decoder, Speculation) else None
        failovers = () if self._session is None else tuple(
            FailoverSummary(tuple(e.peer_ids), e.code, tuple(e.blocks), e.seconds) for e in self._session.failovers)
        return GenerationResult(
            text=self.text, token_ids=list(self.token_ids), finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids), route=self.route,
            timings=Timings(self._open_seconds, first - started, ended - started, decode),
            decoding=self.decoding, local=self._session is None, ring=ring, speculation=speculation,
            failovers=failovers, verification=self._verification())

    def _verification(self) -> VerificationReport:
        verifier = None if self._session is None else self._session.session.verifier
        if verifier is None:
            return VerificationReport()
        stats = verifier.stats
        return VerificationReport(stats.mode, stats.steps_checked, stats.exact_checks, stats.mismatches,
                                  tuple(stats.banned), tuple(stats.banned_at), stats.rewinds, self.retracted_tokens,
                                  tuple(stats.unverifiable))


class Generator:
    """Generates with one model, in this process (`local`) or through a swarm (`swarm`)."""

    def __init__(self, model: ClientModel, client: Optional[SwarmClient] = None):
        self.model, self.client = model, client

    @classmethod
    def local(cls, model: str, dtype: str = "auto", quant: str = "none") -> "Generator":
        """The whole model in this process (quant: weights kept int8 / int4, see engine/quant.py)."""
        return cls(LocalModel.load(model, dtype, quant))

    @classmethod
    def swarm(cls, model: str | ClientModel, client: SwarmClient, dtype: str = "auto") -> "Generator":
        """Through the swarm `client` is connected to; only the head and tokenizer are loaded here."""
        return cls(model if isinstance(model, ClientModel) else ClientModel.load(model, dtype), client)

    def start(self, prompt_ids: Sequence[int], options: GenerationOptions = GenerationOptions(),
              chain: Optional[list] = None) -> Generation:
        """Open what the generation needs (the swarm session) and return it, ready to iterate.
        chain: the servers to start on (ChainLinks, e.g. from SwarmClient.plan); default the best now."""
        if not prompt_ids:
            raise PromptTooLongError("the prompt is empty; send at least one token")
        length = self.model.session_length(len(prompt_ids), options.sampling.max_new_tokens, options.max_length)
        if self.client is None:
            return self._start_local(prompt_ids, options, length)
        return self._start_swarm(prompt_ids, options, length, chain)

    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions = GenerationOptions(),
                 on_text: Optional[Callable[[str], None]] = None,
                 on_retract: Optional[Callable[[int], None]] = None) -> GenerationResult:
        """Run a generation to its end; `on_text` receives each text delta as it becomes final, `on_retract`
        how many characters of what it received were wrong (verification caught a liar late) before the
        text that replaces them."""
        with self.start(prompt_ids, options) as run:
            for event in run:
                if on_retract is not None and event.retracted_chars:
                    on_retract(event.retracted_chars)
                if on_text is not None and event.text_delta:
                    on_text(event.text_delta)
        return run.result()

    def _start_local(self, prompt_ids, options: GenerationOptions, length: int) -> Generation:
        if options.ring:
            raise ValueError("ring decoding needs a swarm; in-process generation has no chain")
        local = self.model
        if not isinstance(local, LocalModel):
            raise ValueError("this generator holds no blocks: use Generator.local for in-process generation")
        speculation = self._speculation(options, length, local.span)
        return Generation(local, prompt_ids, options, length, local.new_forward_fn(length, options.prefill_chunk),
                          speculation, "speculative" if speculation else "plain")

    @classmethod
    def lite(cls, model_id: str, client: SwarmClient) -> "Generator":
        """Through the swarm with no weights here: the tokenizer from a server's header (client/lite.py)."""
        return cls(client.lite_model(model_id), client)

    @property
    def is_lite(self) -> bool:
        return isinstance(self.model.head, LiteHead)

    def _start_swarm(self, prompt_ids, options: GenerationOptions, length: int, chain=None) -> Generation:
        lite = self.is_lite
        if lite and options.logprobs is not None:
            raise LiteError("a lite client has no LM head here, so no log-probabilities: it decodes in a ring only")
        if lite and (options.verify != "off" or options.speculative != "off" or options.ring is False):
            raise LiteError("a lite client decodes in a ring only: no --verify (it needs the LM head), no "
                            "--speculative, no --no-ring")
        speculation = self._speculation(options, length)
        opened = time.perf_counter()
        session = self.client.open_session(self.model.model_id, self.model.config.n_blocks, length,
                                           wire_dtype=options.wire_dtype, prefill_chunk=options.prefill_chunk,
                                           routing_seed=options.routing_seed, verify=options.verify, chain=chain,
                                           radius=options.radius, privacy=options.privacy,
                                           max_price=options.max_price,
                                           lite_hidden_size=self.model.config.hidden_size if lite else None)
        open_seconds = time.perf_counter() - opened
        decoder: Optional[Decoder] = speculation
        decoding = "speculative" if speculation else "plain"
        if options.verify != "off" and speculation is None:
            # regenerates from the last verified position after a late conviction; checks all before the end
            decoder = RewindingDecoder(session.verify_all, self.model.tokenizer)
        wants_ring = options.ring if options.ring is not None else speculation is None and options.logprobs is None
        if lite and not session.session.ring_supported:
            session.close()
            raise LiteError("the chain's ends cannot ring, and a lite client cannot decode otherwise")
        if wants_ring and session.session.ring_supported:
            decoder = RingDecoder(self.client.loop.run, session.session, self.model.tokenizer.eos_token_ids,
                                  self.model.tokenizer)
            decoding = "ring"
        return Generation(self.model, prompt_ids, options, length, session.forward, decoder, decoding, session,
                          open_seconds)

    def _speculation(self, options: GenerationOptions, length: int, span=None) -> Optional[Speculation]:
        """The drafter for options.speculative; early-exit runs blocks [0, draft_blocks) here
        (of `span` when this process already holds them, from block 0)."""
        if options.speculative == "off":
            return None
        draft_length = DraftLength(max_k=options.draft_k)
        if options.speculative == "ngram":
            return Speculation(NgramDrafter(), draft_length)
        n_blocks = self.model.config.n_blocks
        if not 1 <= options.draft_blocks < n_blocks:
            raise ValueError(f"--draft-blocks must be 1..{n_blocks - 1}, got {options.draft_blocks}")
        drafts = span if span is not None else \
            load_span(self.model.source, 0, options.draft_blocks, self.model.dtype, config=self.model.config)
        return Speculation(early_exit_drafter(self.model.head, drafts, options.draft_blocks, length, options.sampling),
                           draft_length)


def generate_text(model: str, prompt: str, options: GenerationOptions | SamplingParams = GenerationOptions(), *,
                  client: Optional[SwarmClient] = None, system: Optional[str] = None,
                  raw: bool = False) -> GenerationResult:
    """Shorthand: a chat-templated prompt (or `raw`), generated through `client` or, without one, locally."""
    if isinstance(options, SamplingParams):
        options = GenerationOptions(sampling=options)
    generator = Generator.swarm(model, client) if client is not None else Generator.local(model)
    return generator.generate(generator.model.prompt_ids(prompt, system, raw), options)
