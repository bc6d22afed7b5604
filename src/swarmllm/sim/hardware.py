"""What a block costs on a machine: model shapes, hardware classes and measured profiles (pure).

A decode or prefill step through k blocks on one node takes

    k * (overhead + max(weight_bytes / (bandwidth * bw_eff), 2 * params * P / (flops * flop_eff))
         + kv_bytes * C / (bandwidth * bw_eff))

for a batch of steps carrying P positions in all over C cached positions in all: a decode step
reads every weight once however many sessions it batches (memory-bound), a long prefill is
compute-bound. A hardware class gives bandwidth, flops, memory and network; `MeasuredProfile`
replaces the roofline with seconds measured on a real machine (benchmarks/sim_measure.py), which is
how the calibration runs: seconds per block per position at batch sizes 1, 2, 4, 8 for decode,
and per prompt position for prefill, interpolated in between.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

WIRE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "int8": 1}
FRAME_OVERHEAD_BYTES = 120      # message header, tensor meta and framing of one step's frame


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped decoder: enough to price its blocks, its KV cache and its wire."""

    name: str
    n_blocks: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def block_params(self) -> int:
        kv = self.kv_heads * self.head_dim
        return 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.ffn

    def block_bytes(self, weight_bits: float) -> float:
        return self.block_params * weight_bits / 8

    def kv_bytes_per_position(self, dtype_bytes: int = 2) -> int:
        """One block's K and V for one position."""
        return 2 * self.kv_heads * self.head_dim * dtype_bytes

    def frame_bytes(self, positions: int, wire: str) -> int:
        """Bytes one hop carries for a step of `positions` positions."""
        return positions * self.hidden * WIRE_BYTES[wire] + FRAME_OVERHEAD_BYTES

    @property
    def head_flops(self) -> int:
        return 2 * self.vocab * self.hidden


SHAPES = {
    "smollm2-135m": Shape("smollm2-135m", 30, 576, 1536, 9, 3, 49152),
    "llama-8b": Shape("llama-8b", 32, 4096, 14336, 32, 8, 128256),
    "llama-70b": Shape("llama-70b", 80, 8192, 28672, 64, 8, 128256),
    "llama-405b": Shape("llama-405b", 126, 16384, 53248, 128, 8, 128256),
}


@dataclass(frozen=True)
class MeasuredProfile:
    """Seconds per block measured on one machine with a given thread count (benchmarks/sim_measure.py)."""

    decode_by_batch: dict[int, float]   # batch size -> seconds per block for the whole batch of 1-position steps
    prefill_per_position: float         # seconds per block per prompt position
    head_per_position: float = 0.0      # the LM head + sampling of one position (where the head runs)
    steps_by_positions: dict[int, float] = field(default_factory=dict)  # short steps (verify): positions -> s/block

    def step(self, positions: int) -> float:
        """Seconds per block of one step of `positions` positions (> 1) computed alone."""
        if positions in self.steps_by_positions:
            return self.steps_by_positions[positions]
        return positions * self.prefill_per_position

    def decode(self, batch: int) -> float:
        sizes = sorted(self.decode_by_batch)
        if batch <= sizes[0]:
            return self.decode_by_batch[sizes[0]] * batch / sizes[0]
        if batch >= sizes[-1]:  # beyond the largest batch measured: grows like the last measured interval
            a, b = sizes[-2:] if len(sizes) > 1 else (sizes[0], sizes[0])
            slope = (self.decode_by_batch[b] - self.decode_by_batch[a]) / (b - a) if b > a else self.decode_by_batch[b] / b
            return self.decode_by_batch[b] + slope * (batch - b)
        i = bisect.bisect_left(sizes, batch)
        a, b = sizes[i - 1], sizes[i]
        w = (batch - a) / (b - a)
        return self.decode_by_batch[a] * (1 - w) + self.decode_by_batch[b] * w


@dataclass(frozen=True)
class Hardware:
    """A class of volunteer machine."""

    name: str
    memory_gb: float                 # what the node may use for weights and KV cache
    bandwidth_gbps: float = 50.0     # memory bandwidth, GB/s
    tflops: float = 1.0              # dense 16-bit TFLOPS
    up_mbps: float = 20.0            # upload, Mbit/s
    down_mbps: float = 100.0         # download, Mbit/s
    gpu: bool = False
    weight_bits: float = 16.0        # bits per weight as the node holds them (4.5: 4-bit with scales)
    bw_eff: float = 0.7              # the share of the bandwidth a decode step reaches
    flop_eff: float = 0.4            # the share of the flops a prefill reaches
    overhead: float = 20e-6          # s per block per step: kernel launches, Python
    threads: int = 1                 # cores a node of this class computes with (shares on one host)
    profile: Optional[MeasuredProfile] = field(default=None, compare=False)

    def max_blocks(self, shape: Shape, kv_reserve_gb: float = 0.5) -> int:
        room = (self.memory_gb - kv_reserve_gb) * 1e9
        return max(0, min(shape.n_blocks, int(room // shape.block_bytes(self.weight_bits))))

    def step_seconds(self, shape: Shape, blocks: int, positions: list[int], contexts: list[int]) -> float:
        """One batch of steps (positions[i] new positions over contexts[i] cached ones) through `blocks` blocks."""
        if self.profile is not None:
            decode = [p for p in positions if p == 1]
            seconds = self.profile.decode(len(decode)) if decode else 0.0
            return blocks * (seconds + sum(self.profile.step(p) for p in positions if p > 1))
        total = sum(positions)
        weights = shape.block_bytes(self.weight_bits) / (self.bandwidth_gbps * 1e9 * self.bw_eff)
        flops = 2 * shape.block_params * total / (self.tflops * 1e12 * self.flop_eff)
        kv = shape.kv_bytes_per_position() * sum(contexts) / (self.bandwidth_gbps * 1e9 * self.bw_eff)
        return blocks * (self.overhead + max(weights, flops) + kv)

    def head_seconds(self, shape: Shape, positions: int) -> float:
        """The LM head and sampling for `positions` positions (the client's, or the ring's last node's)."""
        if self.profile is not None:
            return self.profile.head_per_position * positions
        weights = shape.vocab * shape.hidden * 2 / (self.bandwidth_gbps * 1e9 * self.bw_eff)
        flops = shape.head_flops * positions / (self.tflops * 1e12 * self.flop_eff)
        return max(weights, flops) + 50e-6

    def block_rate(self, shape: Shape) -> float:
        """Decode positions per second through one block (what a node measures at start-up)."""
        return 1.0 / self.step_seconds(shape, 1, [1], [0])


# A stated hardware mix for projections (public spec-sheet figures; efficiencies above).
HARDWARE = {
    "cpu-laptop": Hardware("cpu-laptop", memory_gb=12, bandwidth_gbps=40, tflops=0.4, up_mbps=20, down_mbps=100,
                           weight_bits=4.5, threads=4),
    "cpu-desktop": Hardware("cpu-desktop", memory_gb=28, bandwidth_gbps=70, tflops=1.0, up_mbps=40, down_mbps=300,
                            weight_bits=4.5, threads=8),
    "gpu-8gb": Hardware("gpu-8gb", memory_gb=7, bandwidth_gbps=360, tflops=25, up_mbps=40, down_mbps=300,
                        gpu=True, weight_bits=4.5),
    "gpu-12gb": Hardware("gpu-12gb", memory_gb=11, bandwidth_gbps=500, tflops=35, up_mbps=50, down_mbps=500,
                         gpu=True, weight_bits=4.5),
    "gpu-24gb": Hardware("gpu-24gb", memory_gb=22, bandwidth_gbps=1000, tflops=160, up_mbps=100, down_mbps=1000,
                         gpu=True, weight_bits=8),
    "datacenter-80gb": Hardware("datacenter-80gb", memory_gb=76, bandwidth_gbps=3350, tflops=900, up_mbps=10000,
                                down_mbps=10000, gpu=True, weight_bits=16),
}
