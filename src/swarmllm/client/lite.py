"""The lite client: generation through the swarm with no model weights here at all.

A lite client (`--lite`; what `swarmllm join TOKEN --client` runs) keeps only the tokenizer and
the chat template, read from the model file's GGUF header, which it fetches from a server over the
swarm transport (FILE_HANDLER: `fetch_header`). It never embeds nor samples:

- its inputs are token ids: the session sends them as `Step.token_ids` to the chain's first server,
  which embeds them (protocol v6); the session keeps them (as [1, T, 1] floats, `LiteHead.embed`)
  where a full client keeps embeddings, so failover replays them to a replacement first server;
- decoding is ring decoding: the chain's last server samples every token and the client only
  watches (client/ring.py). Routing therefore keeps the chain's first and last blocks on servers
  that can ring (they hold the model's embedding and head), inside the privacy radius as always.

What it cannot do: verification (checking a ring's token needs the head's logits) and speculative
decoding (drafts need a model); asking for them is an error. The header comes from an untrusted
peer: a tokenizer that does not match the servers' model gives wrong text, never a crash of
anything but this generation; the file's size and the model's block count are checked against the
swarm's records.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import torch

from swarmllm.download.layout import TruncatedHeaderError, gguf_layout
from swarmllm.models.catalog import ModelSource
from swarmllm.protocol import (
    FILE_HANDLER, ErrorCode, ErrorReply, ProtocolError, RangeData, ReadRange, SwarmError, decode_frame, encode_frame,
)
from swarmllm.protocol.messages import MAX_RANGE_BYTES
from swarmllm.runtime.loading import ClientModel
from swarmllm.weights import read_config
from swarmllm.weights.tokenizer import load_tokenizer

FIRST_READ = 2**20          # header bytes asked for first; doubled until the header fits
MAX_HEADER_BYTES = 2**28    # a header larger than this is refused (a vocabulary of millions of tokens)


class LiteError(SwarmError):
    """The lite client cannot do this; the message says why."""


class LiteHead:
    """Stands in for a ModelHead in a client without weights: 'embeds' ids as themselves ([1, T, 1] floats)."""

    def __init__(self, config):
        self.config = config
        self.dtype = torch.float32

    def embed(self, token_ids) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.numel() and (int(ids.max()) >= self.config.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"Token ids must lie in [0, {self.config.vocab_size}).")
        return ids.to(torch.float32).unsqueeze(-1)

    def logits(self, hidden):
        raise LiteError("a lite client holds no LM head: the chain's last server must sample (ring decoding), and "
                        "this chain's end cannot ring")


def lite_cache_dir() -> Path:
    base = os.environ.get("SWARMLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "swarmllm")
    return Path(base) / "lite"


async def _read(swarm, peer_id: str, model_id: str, offset: int, length: int, timeout: float = 30.0):
    stream = await swarm.open_stream(peer_id, FILE_HANDLER)
    try:
        # file_name "": the file the node serves for this model, whatever its name (v6)
        await stream.send(encode_frame(ReadRange(model_id=model_id, file_name="", offset=offset, length=length)))
        import asyncio

        msg, payload = decode_frame(await asyncio.wait_for(stream.recv(), timeout))
    finally:
        stream.close()
    if isinstance(msg, ErrorReply):
        raise ProtocolError(ErrorCode(msg.code) if msg.code in ErrorCode._value2member_map_ else ErrorCode.INTERNAL,
                            msg.message)
    if not isinstance(msg, RangeData) or msg.offset != offset or msg.length != len(payload):
        raise ProtocolError(ErrorCode.MALFORMED, f"peer {peer_id} answered another range")
    return bytes(payload), msg.total_size


async def fetch_header(swarm, peer_ids: list[str], model_id: str, folder: Optional[Path] = None) -> Path:
    """A sparse local copy of `model_id`'s GGUF holding its header only, read from the first of `peer_ids`
    that serves it. Kept in the lite cache (`folder`) under a name from the header's hash."""
    reasons = []
    for peer_id in peer_ids:
        try:
            prefix, size = await _read(swarm, peer_id, model_id, 0, FIRST_READ)
            while True:
                try:
                    layout = gguf_layout(prefix, size, f"{model_id}'s header from {peer_id}")
                    break
                except TruncatedHeaderError:
                    want = min(2 * len(prefix), size, MAX_HEADER_BYTES)
                    if want <= len(prefix):
                        raise
                    while len(prefix) < want:
                        chunk, _ = await _read(swarm, peer_id, model_id, len(prefix),
                                               min(MAX_RANGE_BYTES, want - len(prefix)))
                        prefix += chunk
        except (ConnectionError, ProtocolError, TruncatedHeaderError, ValueError, OSError) as e:
            reasons.append(f"{peer_id[-8:]}: {e}")
            continue
        header = prefix[:layout.header_end]
        folder = folder or lite_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{model_id}.{hashlib.sha256(header).hexdigest()[:12]}.gguf"
        if not path.exists() or path.stat().st_size != size:
            part = path.with_suffix(".part")
            with open(part, "wb") as f:
                f.write(header)
                f.truncate(size)  # sparse: the tensors are never read here
            os.replace(part, path)
        return path
    raise LiteError(f"no server shared the header of {model_id}" + (f" ({'; '.join(reasons[:3])})" if reasons else ""))


def lite_model(model_id: str, path: Path) -> ClientModel:
    """A ClientModel with no weights: config and tokenizer from the header copy, a LiteHead."""
    source = ModelSource(model_id, str(path), "gguf")
    config = read_config(source)
    return ClientModel(source, config, LiteHead(config), load_tokenizer(source), torch.float32, "none")
