"""Per-peer quotas (server/quotas.py) with a fake clock: each limit refuses the peer over it, names
the limit, says when to retry, and leaves every other peer alone."""

from __future__ import annotations

from collections import deque

import pytest

from swarmllm.protocol import ErrorCode, QuotaError
from swarmllm.protocol.messages import MAX_POSITIONS_PER_STEP
from swarmllm.server.quotas import PeerQuotas, QuotaLimits, refill, step_positions_limit
from swarmllm.server.sessions import ServerSession


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def quotas(**limits) -> tuple[PeerQuotas, Clock]:
    clock = Clock()
    return PeerQuotas(QuotaLimits(**limits), clock), clock


def refused(call, *args) -> QuotaError:
    with pytest.raises(QuotaError) as info:
        call(*args)
    assert info.value.code == ErrorCode.OVER_QUOTA
    return info.value


def test_sessions_per_peer():
    q, _ = quotas(max_sessions=2)
    q.admit_session("greedy", 1, 1000)
    q.admit_session("greedy", 1, 1000)
    error = refused(q.admit_session, "greedy", 1, 1000)
    assert (error.limit, error.value, error.retry_after) == ("sessions", 2, None) and "(2)" in error.message
    q.admit_session("normal", 1, 1000)  # another peer is not affected
    q.release_session("greedy", 1)
    q.admit_session("greedy", 1, 1000)  # a closed session makes room again


def test_memory_share_keeps_room_for_other_peers():
    q, _ = quotas(max_memory_share=0.5)
    q.admit_session("greedy", 300, 1000)
    q.admit_session("greedy", 200, 1000)  # exactly half
    error = refused(q.admit_session, "greedy", 1, 1000)
    assert error.limit == "memory" and error.value == 0.5 and "50%" in error.message
    q.admit_session("normal", 500, 1000)
    assert q.usage("greedy").reserved == 500 and q.usage("greedy").sessions == 2


def test_streams_and_bytes_in_flight():
    q, _ = quotas(max_streams=2, max_bytes_in_flight=100)
    q.open_stream("p"), q.open_stream("p")
    assert refused(q.open_stream, "p").limit == "streams"
    q.open_stream("other")
    q.close_stream("p")
    q.open_stream("p")
    q.take_bytes("p", 60)
    error = refused(q.take_bytes, "p", 41)
    assert error.limit == "bytes_in_flight" and error.value == 100 and error.retry_after > 0
    q.take_bytes("other", 100)
    q.release_bytes("p", 60)
    q.take_bytes("p", 100)


def test_step_positions_follow_the_model_and_the_operator():
    assert step_positions_limit(2048, context_length=8192, max_session_length=4096) == 2048
    assert step_positions_limit(99999, context_length=2048, max_session_length=4096) == 2048
    assert step_positions_limit(99999, context_length=10**6, max_session_length=10**6) == MAX_POSITIONS_PER_STEP
    assert step_positions_limit(4096, context_length=8192, max_session_length=1024) == 1024
    q, _ = quotas(step_positions=16)
    q.check_step_positions(16)
    error = refused(q.check_step_positions, 17)
    assert (error.limit, error.value, error.retry_after) == ("step_positions", 16, None)


def test_rollbacks_are_limited_per_session_per_window():
    q, clock = quotas(max_rollbacks=3, rollback_window=10.0)
    times, other = deque(), deque()
    for _ in range(3):
        q.check_rollback(times, True)
        q.record_rollback(times, True)
        clock.now += 1
    q.check_rollback(times, False)  # a step that does not roll back always passes
    error = refused(q.check_rollback, times, True)
    assert error.limit == "rollbacks" and error.retry_after == pytest.approx(7.0)
    q.check_rollback(other, True)  # another session has its own budget
    clock.now += 7.01
    q.check_rollback(times, True)  # the oldest left the window


def test_compute_bucket_only_bites_while_another_peer_is_served():
    q, clock = quotas(compute_share=0.5, compute_burst=2.0, contention_window=2.0)
    for _ in range(10):  # alone on the node: a peer may use all of it
        reserved = q.admit_compute("greedy", 100)
        q.settle_compute("greedy", reserved, 1.0, 100)
        clock.now += 1.0
    assert q.usage("greedy").compute == pytest.approx(-2.0)  # the debt is floored at -burst
    q.settle_compute("normal", q.admit_compute("normal", 1), 0.01, 1)  # someone else asks for a step
    error = refused(q.admit_compute, "greedy", 100)
    assert error.limit == "compute" and error.value == 0.5 and error.retry_after > 0
    q.admit_compute("normal", 1)  # the other peer is served
    clock.now += error.retry_after + 0.01
    q.admit_compute("greedy", 100)  # its share came back


def test_an_admitted_step_reserves_its_estimated_cost():
    """Concurrent steps of one peer cannot all pass on one full bucket."""
    q, clock = quotas(compute_share=0.5, compute_burst=2.0)
    q.settle_compute("a", q.admit_compute("a", 10), 0.1, 10)  # measured: 10 ms per position
    q.admit_compute("b", 1)  # contention
    admitted = 0
    with pytest.raises(QuotaError):
        for _ in range(100):
            q.admit_compute("a", 50)  # each reserves 0.5 s, none has finished yet
            admitted += 1
    assert admitted == 4  # 1.9 s left in the bucket: 4 reservations of 0.5 s


def test_settling_refunds_a_step_that_never_ran():
    q, _ = quotas(compute_burst=2.0)
    q.settle_compute("a", q.admit_compute("a", 10), 0.2, 10)
    level = q.usage("a").compute
    q.settle_compute("a", q.admit_compute("a", 10), None, 10)
    assert q.usage("a").compute == pytest.approx(level)


def test_idle_peers_are_forgotten_once_their_bucket_is_full():
    q, clock = quotas(compute_share=1.0, compute_burst=1.0, contention_window=1.0)
    q.open_stream("p")
    q.settle_compute("p", q.admit_compute("p", 1), 0.5, 1)
    q.close_stream("p")
    assert "p" in q.peers  # still in debt: remembered
    clock.now += 5
    q.prune()
    assert q.peers == {}


def test_refill_is_capped():
    assert refill(0.0, 0.0, 10.0, rate=0.5, burst=2.0) == 2.0
    assert refill(-1.0, 0.0, 1.0, rate=0.5, burst=2.0) == -0.5


@pytest.mark.parametrize("bad", [{"max_memory_share": 0}, {"max_memory_share": 1.5}, {"compute_share": 0},
                                 {"max_sessions": 0}, {"rollback_window": -1}])
def test_impossible_limits_are_refused(bad):
    with pytest.raises(ValueError):
        QuotaLimits(**bad)


def test_sessions_answer_who_may_act_on_them_from_peer_ids():
    first = ServerSession("s" * 16, 0, 10, 8, "float32", None, None, 0, owner="client")
    middle = ServerSession("t" * 16, 10, 20, 8, "float32", None, None, 0, owner="client", upstream="server-a")
    assert first.may_step("client") and not first.may_step("stranger")
    assert middle.may_step("server-a") and not middle.may_step("client") and not middle.may_step("stranger")
    assert middle.may_control("client") and not middle.may_control("server-a")
    assert not first.may_ring("server-c", 5)
    first.ring_source, first.ring_steps = "server-c", range(5, 9)
    assert first.may_ring("server-c", 5) and not first.may_ring("server-c", 9) and not first.may_ring("stranger", 6)


def test_peers_in_debt_queue_behind_peers_within_their_share():
    q, _ = quotas(compute_burst=2.0)
    q.settle_compute("greedy", q.admit_compute("greedy", 100), 3.0, 100)
    q.settle_compute("normal", q.admit_compute("normal", 1), 0.01, 1)
    assert q.priority("normal") == 0.0 and q.priority("greedy") == pytest.approx(1.0)


def test_a_peer_whose_step_waits_is_contending_however_long_it_waits():
    q, clock = quotas(compute_share=0.5, compute_burst=1.0, contention_window=2.0)
    q.settle_compute("greedy", q.admit_compute("greedy", 100), 1.0, 100)
    q.settle_compute("greedy", q.admit_compute("greedy", 100), 1.0, 100)  # alone: admitted into debt
    waiting = q.admit_compute("normal", 1)  # queued behind something long
    clock.now += 10.0  # past the window, and the greedy peer's debt (-1) is repaid by now: +5 s of share
    q.settle_compute("greedy", q.admit_compute("greedy", 100), 8.0, 100)
    with pytest.raises(QuotaError):
        q.admit_compute("greedy", 100)  # the normal client's step still waits: contended
    q.settle_compute("normal", waiting, 0.01, 1)
    clock.now += 2.1
    q.settle_compute("greedy", q.admit_compute("greedy", 100), 1.0, 100)  # nobody else is served now


def test_serve_quota_flags_map_onto_the_server_config_and_its_defaults_onto_the_policy():
    from swarmllm.cli import build_parser
    from swarmllm.server.node import ServerConfig

    args = build_parser().parse_args([
        "serve", "--initial-peers", "x", "--max-sessions-per-peer", "4", "--max-memory-share", "0.25",
        "--compute-share", "0.3", "--compute-burst", "1.5", "--max-streams-per-peer", "9", "--max-in-flight-mb", "8",
        "--max-step-positions", "300", "--max-rollbacks", "50", "--rollback-window", "10"])
    config = ServerConfig.from_flags(vars(args))
    assert config.quota_limits(300) == QuotaLimits(
        max_sessions=4, max_memory_share=0.25, compute_share=0.3, compute_burst=1.5, max_streams=9,
        max_bytes_in_flight=8 * 2**20, step_positions=300, max_rollbacks=50, rollback_window=10.0)
    defaults = ServerConfig.from_flags(vars(build_parser().parse_args(["serve", "--initial-peers", "x"])))
    assert defaults.quota_limits(2048) == QuotaLimits() == ServerConfig(model="m").quota_limits(2048)
    with pytest.raises(ValueError, match="max_memory_share"):
        ServerConfig.from_flags(vars(build_parser().parse_args(["serve", "--initial-peers", "x",
                                                                "--max-memory-share", "2"])))
