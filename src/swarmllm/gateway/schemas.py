"""Request and response models of the OpenAI API subset the gateway implements.

Requests are validated strictly on the fields we act on and tolerant of the extra fields
OpenAI clients send (they are ignored). Responses follow OpenAI's shapes so the official
`openai` package parses them unchanged; our extension (`swarmllm`: route and speed) rides
in an extra field that OpenAI clients ignore.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from swarmllm.client.radius import parse_radius
from swarmllm.protocol.records import MAX_PRICE


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


MAX_CHOICES = 8  # `n` at most: each choice is a generation through the swarm


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False  # a last chunk, before [DONE], with empty choices and the usage of the request


class _SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    # Sampling: what a request leaves out (None) is the model's recommended value (catalog.py; `swarmllm models
    # --json`), else OpenAI's default (temperature 1, top_p 1, no penalty).
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    # Extensions with llama.cpp's / Ollama's meaning (and their names for two of them):
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0, le=10.0,
                                                validation_alias=AliasChoices("repetition_penalty", "repeat_penalty"))
    penalty_last_n: Optional[int] = Field(default=None, ge=-1, le=131072,
                                          validation_alias=AliasChoices("penalty_last_n", "repeat_last_n"))
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)   # choices, each its own generation (seed, seed + 1, ...)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = Field(default=None, max_length=256)  # the caller's end user, as OpenAI takes it: logged
    # Our extension: how the servers' work is checked (docs/verification.md); None = the gateway's default.
    verify: Optional[Literal["off", "sample", "strict"]] = None
    # Our extension: the trust radius of the chain ("local", "trusted", "public", or with widenings such as
    # "trusted+public") and of its ends (privacy, which see token ids); None = the gateway's default.
    radius: Optional[str] = Field(default=None, max_length=40, pattern=r"^[a-z+]+$")
    privacy: Optional[Literal["local", "trusted", "public"]] = None
    # Our extension: credits per 1,000 tokens the chain may cost in all (servers announce a price; 0 = free);
    # None = any price. A ceiling no chain meets is a 400 "price_unavailable" naming the cheapest price.
    max_price: Optional[float] = Field(default=None, ge=0.0, le=MAX_PRICE, allow_inf_nan=False)

    @field_validator("radius")
    @classmethod
    def _radius(cls, value):
        if value is not None:
            parse_radius(value)  # ValueError: "use local, trusted or public, ..."
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 200 characters")
        return stops


class ChatCompletionRequest(_SamplingRequest):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 3}]})

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    logprobs: bool = False                                   # each token's log-probability in choices[].logprobs
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)  # ... and this many alternatives' (needs logprobs)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def logprob_count(self) -> Optional[int]:
        """None: no log-probabilities; n: the token's and n alternatives'."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingRequest):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 3, "stream": True}]})

    prompt: str = Field(max_length=200_000)
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)  # the legacy API's: the token's and n alternatives'
    echo: bool = Field(default=False)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value):
        if value:
            raise ValueError("echo is not supported: the reply holds the completion only")
        return value

    @property
    def logprob_count(self) -> Optional[int]:
        return self.logprobs


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RouteHop(BaseModel):
    peer_id: str
    start: int
    end: int


class VerificationInfo(BaseModel):
    """What was checked of the servers' work for this reply (client/verification.py)."""

    mode: str                           # "off", "sample" or "strict"
    steps_checked: int                  # server-positions compared with an independent server's
    mismatches: int                     # disagreements found, each decided by a third server
    banned: list[str]                   # peers convicted of wrong outputs during this request
    retracted_tokens: int = 0           # tokens computed from wrong outputs, replaced before the reply
    unverifiable: list[str] = []        # spans ("[start, end) peer") no independent server could check


class SwarmInfo(BaseModel):
    """Our extension: which nodes served the reply and how fast."""

    route: list[RouteHop]
    tokens_per_second: float
    time_to_first_token: float
    completion_tokens: int
    ring: bool = False                 # decoded in a ring (the chain's last server sampled)
    decoding: str = "plain"            # "ring", "speculative" or "plain"
    verification: Optional[VerificationInfo] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """OpenAI's chat shape: one entry per generated token."""

    content: Optional[list[TokenLogprob]]
    refusal: Optional[list[TokenLogprob]] = None


class TextLogprobs(BaseModel):
    """The legacy completions shape: parallel lists."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str]


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: Optional[TextLogprobs] = None
    finish_reason: Optional[str]


class _Reply(BaseModel):
    """What every completion object and chunk starts with."""

    id: str
    created: int
    model: str


class ChatCompletion(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    swarmllm: SwarmInfo


class Completion(_Reply):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage
    swarmllm: SwarmInfo


class ChunkDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None


class _Chunk(_Reply):
    """One server-sent event of a streamed reply; the last carries usage and our extension."""

    usage: Optional[Usage] = None
    swarmllm: Optional[SwarmInfo] = None


class ChatCompletionChunk(_Chunk):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class CompletionChunk(_Chunk):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "swarmllm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
