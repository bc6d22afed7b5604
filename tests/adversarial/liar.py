"""A test-only lying node: `swarmllm serve` whose outputs or replies are wrong on purpose.

Run as `python tests/adversarial/liar.py MODE serve ...`. Its receipts are honest about what it
sends (it signs its lies), so only a client that re-computes spans can tell. MODE:
- "noise:P": each step's output is perturbed (Gaussian noise, 5% of its largest value) with probability P;
- "nan" / "zeros": every step's output is NaN / zeros;
- "after:N": honest for N steps, then "noise:1";
- "collude:P": like noise:P, but the noise and the choice of step are a function of the step's position and
  input, so two such nodes give the same wrong answer for the same step;
- "ring-token": honest hidden states, but as a ring's last server it sends the most unlikely token;
- "stall": answers pings, never finishes a step;
- "blame": answers every step with an ErrorReply blaming its next server (or the client's previous one);
- "report": computes and pushes honestly, but reports (OpenSession.report_outputs) other bytes than it signed.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time

import torch

from swarmllm import cli
from swarmllm.engine.blocks import SpanModel


def _perturb(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.dtype)
    return out + 0.05 * out.abs().max() * noise


def _content_seed(step) -> int:
    digest = hashlib.sha256(step.hidden.float().numpy().tobytes() + str(step.start_position).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _lying_forward(mode: str, arg: float):
    honest = SpanModel.forward_many
    rng = random.Random()
    steps_done = [0]

    def forward_many(self, steps):
        if mode == "stall" and serving:  # after start-up (which measures its speed with real steps)
            time.sleep(3600)
        outputs = honest(self, steps)
        lied = []
        for step, out in zip(steps, outputs):
            steps_done[0] += 1
            if mode == "nan":
                out = torch.full_like(out, float("nan"))
            elif mode == "zeros":
                out = torch.zeros_like(out)
            elif mode == "noise" and rng.random() < arg:
                out = _perturb(out, torch.Generator().manual_seed(rng.getrandbits(62)))
            elif mode == "after" and steps_done[0] > arg:
                out = _perturb(out, torch.Generator().manual_seed(rng.getrandbits(62)))
            elif mode == "collude":
                seed = _content_seed(step)
                if (seed % 10_000) / 10_000 < arg:
                    out = _perturb(out, torch.Generator().manual_seed(seed))
            lied.append(out)
        return lied

    return forward_many


def _blaming_step():
    from swarmllm.protocol import ErrorCode, ProtocolError
    from swarmllm.server.handlers import SessionService

    async def step(self, msg, payload=None, hidden=None, sender: str = "", ring_token: bool = False) -> None:
        session = self.table.get(msg.session_id)
        blamed = session.next_hop.peer_id if session.next_hop is not None else (session.upstream or session.owner)
        await self._reply_error(session.client_stream, ProtocolError(ErrorCode.DOWNSTREAM, "the next server failed"),
                                session.session_id, msg.step_id, peer_id=blamed)

    SessionService._step = step


def _false_reports():
    from swarmllm.server.handlers import SessionService

    async def send_quietly(session, frame: bytes) -> None:  # only reported outputs go this way
        try:
            await session.client_stream.send(frame[:-1] + bytes([frame[-1] ^ 0xFF]))
        except ConnectionError:
            pass

    SessionService._send_quietly = staticmethod(send_quietly)


def _wrong_ring_tokens():
    from swarmllm.server.ring import RingState

    honest = RingState.next_token

    def next_token(self, head, last_hidden, position, max_length):
        token, finished = honest(self, head, last_hidden, position, max_length)
        logits = head.logits(last_hidden.reshape(1, 1, -1))[0, -1]
        return int(logits.argmin()), finished

    RingState.next_token = next_token


serving: list[bool] = []  # non-empty once the node said it is ready


def _note_ready() -> None:
    honest = cli._print_ready

    def print_ready(payload: dict) -> None:
        serving.append(True)
        honest(payload)

    cli._print_ready = print_ready


def main() -> int:
    mode, _, arg = sys.argv[1].partition(":")
    _note_ready()
    if mode == "blame":
        _blaming_step()
    elif mode == "report":
        _false_reports()
    elif mode == "ring-token":
        _wrong_ring_tokens()
    else:
        SpanModel.forward_many = _lying_forward(mode, float(arg or 0))
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
