"""The free tier's policy: contributors get more (docs/free-tier.md). Pure functions, no I/O.

- Anonymous callers (and keys linked to no node) get the gateway's per-IP (or per-key) limits.
- A key linked to contributing nodes (`swarmllm credits link`, a link signed by each node's key)
  gets its limits times `1 + min(max_boost, credits_24h / credits_per_step)`: 20 000 credits of
  verified work in the last 24 hours double them, 60 000 or more quadruple them.
- Admission priority (gateway/limits.py Admission) is the same recent contribution: a waiting
  request of a bigger contributor is admitted first; anonymous callers (priority 0) last, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmllm.gateway.limits import Limits


@dataclass(frozen=True)
class FreeTierPolicy:
    credits_per_step: float = 20_000.0  # credits in 24 h that add 1x the base limits
    max_boost: float = 3.0              # at most base x (1 + this)
    window: float = 86_400.0            # s of contribution that counts


def boost(credits_recent: int, policy: FreeTierPolicy = FreeTierPolicy()) -> float:
    return 1.0 + min(policy.max_boost, max(0, credits_recent) / policy.credits_per_step)


def contributor_limits(base: Limits, credits_recent: int, policy: FreeTierPolicy = FreeTierPolicy()) -> Limits:
    factor = boost(credits_recent, policy)
    return Limits(requests_per_minute=int(base.requests_per_minute * factor),
                  tokens_per_minute=int(base.tokens_per_minute * factor), concurrency=int(base.concurrency * factor))


def admission_priority(credits_recent: int) -> float:
    """Higher is admitted first; 0 for anonymous callers and keys that contributed nothing."""
    return float(max(0, credits_recent))
