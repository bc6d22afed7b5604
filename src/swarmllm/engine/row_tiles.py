"""Row tiles: the rows of a step are computed by calls of fixed shape, so that a row's result
depends on that row's input only -- not on how many rows its call has, nor which.

Continuous batching (a session's rows stacked with other sessions'), failover replays (a step
cut short replays as a shorter one), speculative verify steps (k rows at once must equal k
single-row steps, LM head included) and two-server comparisons all rely on that property.

Why calls must have a fixed shape. CPU kernels choose their code path from the call's shape,
and the paths round differently (measured with torch 2.13, benchmarks/row_exact.py):
- MKL sgemm (float32 linears): one row takes a matrix-vector kernel, a few rows a small-M
  kernel, more rows a blocked one, and with 2+ threads the rows are split between threads in
  shape-dependent parts; on this AMD EPYC (AVX2) rows 1-3, 5-7 and 9-11 of a call differ from
  the same rows in larger calls. In MKL's CNR mode MKL_CBWR=COMPATIBLE (the same code on every
  CPU) a 4-row call differs from an 8-row one, which is how the old scheme (row counts padded
  to a multiple of 4, measured exact on AVX-512 and AVX2 hosts) fails there -- and how it failed
  on an Intel Xeon with AVX512-BF16 (issue 10). No padding rule can be proven from one host.
- Elementwise kernels split a call's elements between threads at `numel / threads`, which can
  fall inside a vector; the elements past it take the scalar loop, and float32 GELU-tanh's
  scalar loop (std::tanh) rounds differently from the vector one (Sleef): with 5 or 7 threads
  a row of `gelu(gate)` changes with the row count from 9-11 rows on.

So a step's rows never meet a kernel in a call whose shape depends on what else is computed:
- short steps (at most `EXACT_STEP_POSITIONS` rows: decode steps, verify steps, short
  prompts; the ones that are batched, cut and compared with single steps) are stacked and cut
  into tiles of exactly `tile` rows, zero-padded; every row-wise op (norms, linears, q/k norm,
  RoPE, activation, residuals) runs once per tile, so every tile meets the same kernel paths;
- a long step (a prefill of more rows: never cut short, replayed in its original chunks) is
  one call of its own rows, never stacked with another step's: its replay has the same shape;
- an activation call covers at most `ACTIVATION_CALL_ELEMENTS` elements (whole rows), below
  every elementwise kernel's multi-threading threshold, so no thread boundary cuts a row.

What remains is a row's index inside a tile, which no shape rule settles: `select_tile` picks
the first candidate tile (`tile_candidates`) whose rows a start-up self-check (`tile_is_exact`)
finds identical at every index and whatever the other rows, per (shapes, dtype, thread count),
and falls back to 1 -- one row per call, identical by construction. Whether a tile is exact is
measured, never assumed from the CPU's name; the candidates are a choice of speed, fixed per
dtype and kernel library, and the check is deterministic, so two servers with the same kernels
pick the same tile (a choice by timing could differ between them). Float32 uses tiles of 1
(MKL's matrix-vector kernel is the fastest for a lone decode step), bfloat16 on CPUs that
multiply it natively tries 4 (oneDNN computes 4 rows for the price of one). `ANY_ROWS` (a tile
of 0) means no tiling: kernels that compute each row by the same per-row loop whatever the row
count (the int8/int4 weight-only kernels on CPU), checked at start-up by `counts_are_exact`.

MKL's Conditional Numerical Reproducibility does not replace this: CNR promises the same result
for the same call (same shapes, and with `,STRICT` any thread count), not the same row from
calls of different row counts. Measured here: `MKL_CBWR=AUTO,STRICT` removes the thread-split
differences but rows of 1-3-row calls still differ from larger calls; `MKL_CBWR=COMPATIBLE`
makes more counts differ (4 vs 8+). With fixed-shape tiles CNR is not needed.

Pure compute: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from swarmllm.engine.dtypes import cpu_has_native_bf16

ANY_ROWS = 0
"""A tile of 0: one call for all the short rows, any count (kernels checked row-count independent)."""

ACTIVATION_CALL_ELEMENTS = 16384
"""Most elements per activation call. torch 2.13 splits GELU between threads above 16384 elements
(`GELU_MIN_ELEMENTS_FOR_MULTI_THREADING`) and other elementwise ops above 32768 (`GRAIN_SIZE`)."""

_selected: dict[tuple, int] = {}  # (key, candidates, threads) -> tile, see select_tile
Rows = tuple[torch.Tensor, ...]


def tile_candidates(dtype: torch.dtype) -> tuple[int, ...]:
    """Tiles tried for dense layers on CPU, first choice first: a choice of speed, made by the
    kernel's cost (exactness is measured by `tile_is_exact`), fixed so that hosts agree.

    float32 (MKL): 1. MKL's matrix-vector kernel makes a lone decode step ~2x cheaper than any
    multi-row call (benchmarks/results/engine_rows.md: 15.1 vs 8.2 tokens/s on this AMD EPYC;
    1.5x in CPU time on an AVX-512 EPYC before), while batches lose less: a block's weights stay
    in cache across its rows' calls (8 sessions: 26.3 vs 29.2 tokens/s with tiles of 4).
    bfloat16 where the CPU multiplies it natively (oneDNN): 4, else 1. There a 4-row call
    costs what a 1-row one does (7.2 vs 7.3 ms per decode step through 10 blocks, AVX-512
    EPYC), so a batch of 4 is one call for free; elsewhere torch's fallback bf16 kernel costs
    in proportion to the rows, and a lone step with tiles of 4 is 2.4x slower (7.6 vs 18.1
    tokens/s here)."""
    return (4, 1) if dtype == torch.bfloat16 and cpu_has_native_bf16() else (1,)


@dataclass(frozen=True)
class RowLayout:
    """Where each step's rows sit in the stacked matrix, and the row ranges each call covers.

    Short steps come first, in the steps' order, then `padding` zero rows, then each long step.
    """

    offsets: tuple[tuple[int, int], ...]  # per step (in the steps' order): its rows [a, b)
    segments: tuple[tuple[int, int], ...]  # the row ranges [a, b) of the calls: tiles, then long steps
    short_rows: int  # rows of the short steps (before the padding)
    padding: int  # zero rows after the short rows, to fill the last tile
    rows: int  # all rows, padding included

    def stack(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-step tensors [T_i, ...] (the steps' order) -> one [rows, ...] in layout order."""
        if len(parts) == 1 and not self.padding:
            return parts[0]
        placed = sorted(zip(self.offsets, parts), key=lambda item: item[0][0])
        ordered = [part for _, part in placed]
        if self.padding:
            zeros = parts[0].new_zeros(self.padding, *parts[0].shape[1:])
            ordered.insert(sum(1 for (a, _), _ in placed if a < self.short_rows), zeros)
        return torch.cat(ordered)

    def is_short(self, segment: tuple[int, int]) -> bool:
        return segment[0] < self.short_rows + self.padding


def plan_rows(lengths: Sequence[int], tile: int, long_rows: int) -> RowLayout:
    """The layout of steps of `lengths` rows; steps of more than `long_rows` rows are long."""
    offsets: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    row = 0
    for i, n in enumerate(lengths):
        if n <= long_rows:
            offsets[i] = (row, row + n)
            row += n
    short_rows = row
    if tile == ANY_ROWS:
        padding, segments = 0, [(0, short_rows)] if short_rows else []
    else:
        padding = -short_rows % tile
        segments = [(a, a + tile) for a in range(0, short_rows + padding, tile)]
    row += padding
    for i, n in enumerate(lengths):
        if n > long_rows:
            offsets[i] = (row, row + n)
            segments.append((row, row + n))
            row += n
    return RowLayout(tuple(offsets), tuple(segments), short_rows, padding, row)


def per_segment(fn: Callable[..., torch.Tensor | Rows], layout: RowLayout, *rows: torch.Tensor):
    """fn applied to each segment's rows of `rows` (all [layout.rows, ...]), results stacked back.

    fn(short, *row_slices) returns a tensor or a tuple of tensors; `short` says whether the
    segment holds short steps' rows (a tile) or one long step."""
    if len(layout.segments) == 1:
        return fn(layout.is_short(layout.segments[0]), *rows)
    parts = [fn(layout.is_short((a, b)), *(t[a:b] for t in rows)) for a, b in layout.segments]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def _equal(a: torch.Tensor | Rows, b: torch.Tensor | Rows) -> bool:
    if isinstance(a, tuple):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def _rows(out: torch.Tensor | Rows, index: slice | int) -> torch.Tensor | Rows:
    return tuple(t[index] for t in out) if isinstance(out, tuple) else out[index]


def tile_is_exact(fn: Callable[..., torch.Tensor | Rows], samples: Rows, tile: int) -> bool:
    """Whether fn computes a row alike at every index of a `tile`-row call, whatever the other rows.

    samples: fn's inputs, each [>= tile, ...] random rows. Checks that row 0 alone (zero rows
    elsewhere) at every index gives what it gives among the sample's rows, and that the
    sample's rows rotated by one give its outputs rotated by one."""
    sample = tuple(s[:tile].contiguous() for s in samples)
    ref = fn(*sample)
    for i in range(tile):
        alone = tuple(torch.zeros_like(s) for s in sample)
        for z, s in zip(alone, sample):
            z[i] = s[0]
        if not _equal(_rows(fn(*alone), slice(i, i + 1)), _rows(ref, slice(0, 1))):
            return False
    rolled = fn(*(s.roll(1, 0).contiguous() for s in sample))
    return _equal(rolled, tuple(t.roll(1, 0) for t in ref) if isinstance(ref, tuple) else ref.roll(1, 0))


def counts_are_exact(fn: Callable[..., torch.Tensor | Rows], samples: Rows,
                     counts: Sequence[int] = (1, 2, 3, 5, 8, 13)) -> bool:
    """Whether calls of each of `counts` rows (from the start and the end of the samples) give the
    rows the call over all the samples' rows gives (a check of `ANY_ROWS`)."""
    n = samples[0].shape[0]
    ref = fn(*samples)
    for m in counts:
        for a in (0, n - m):
            if not _equal(fn(*(s[a:a + m].contiguous() for s in samples)), _rows(ref, slice(a, a + m))):
                return False
    return True


def select_tile(key: tuple, is_exact: Callable[[int], bool], candidates: Sequence[int]) -> int:
    """The first candidate that `is_exact` confirms (1 needs no check), measured once per key,
    candidates and torch thread count (the kernels split work between threads, so the count is
    part of the shape)."""
    full_key = key + (tuple(candidates), torch.get_num_threads())
    tile = _selected.get(full_key)
    if tile is None:
        with torch.inference_mode():
            tile = next((q for q in candidates if q == 1 or is_exact(q)), 1)
        _selected[full_key] = tile
    return tile


def gated_activation(activation: Callable[[torch.Tensor], torch.Tensor], gate: torch.Tensor, up: torch.Tensor,
                     short: bool) -> torch.Tensor:
    """activation(gate) * up; for short steps' rows in calls of whole rows below the threading threshold.

    gate and up are column halves of one [M, 2I] matrix, so each row is a separate inner loop
    of the kernel and a single-threaded call computes every row alike."""
    per_call = max(1, ACTIVATION_CALL_ELEMENTS // gate.shape[1])
    if not short or gate.shape[0] <= per_call:
        return activation(gate) * up
    return torch.cat([activation(gate[a:a + per_call]) * up[a:a + per_call]
                      for a in range(0, gate.shape[0], per_call)])
