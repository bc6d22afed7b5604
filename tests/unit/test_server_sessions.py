"""Server bookkeeping (no network): capacity, validation before compute, block choice."""

import pytest

from swarmllm.protocol import ErrorCode, OpenSession, ProtocolError, ServerRecord, Step, TensorMeta
from swarmllm.server.block_selection import choose_span
from swarmllm.server.sessions import ServerSession, SessionTable


class FakeCache:
    def __init__(self, length=0):
        self.length = length


def table(budget=1000):
    return SessionTable(10, 20, hidden_size=8, budget_block_positions=budget, max_session_length=100)


def open_msg(sid="s" * 16, start=10, end=20, max_length=50, model="m"):
    return OpenSession(session_id=sid, model_id=model, start=start, end=end, max_length=max_length)


def add(t, msg):
    t.check_open(msg, "m")
    s = ServerSession(msg.session_id, msg.start, msg.end, msg.max_length, "float32", None, FakeCache(),
                      msg.max_length * (msg.end - msg.start))
    t.add(s)
    return s


def test_capacity_is_reserved_and_returned_once():
    t = table(budget=1000)
    add(t, open_msg("a" * 16, max_length=50))  # 500 block-positions
    add(t, open_msg("b" * 16, start=15, max_length=100))  # 500
    with pytest.raises(ProtocolError) as info:
        t.check_open(open_msg("c" * 16, max_length=10), "m")
    assert info.value.code == ErrorCode.OUT_OF_CAPACITY and "only 0 are free" in info.value.message
    t.remove("a" * 16)
    t.remove("a" * 16)
    assert t.used == 500 and t.free_tokens == 50


@pytest.mark.parametrize("msg, code", [
    (open_msg(start=5), ErrorCode.BAD_SPAN),
    (open_msg(model="other"), ErrorCode.BAD_SPAN),
    (open_msg(max_length=101), ErrorCode.TOO_LONG),
])
def test_open_rejections(msg, code):
    with pytest.raises(ProtocolError) as info:
        table().check_open(msg, "m")
    assert info.value.code == code


def step(shape=(1, 2, 8), step_id=0, start_position=0):
    return Step(session_id="s" * 16, step_id=step_id, start_position=start_position,
                tensor=TensorMeta(dtype="float32", shape=shape))


@pytest.mark.parametrize("msg, cached, last, code", [
    (step(shape=(1, 2, 7)), 0, -1, ErrorCode.BAD_SHAPE),
    (step(shape=(2, 2, 8)), 0, -1, ErrorCode.BAD_SHAPE),
    (step(shape=(1, 0, 8)), 0, -1, ErrorCode.BAD_SHAPE),
    (step(start_position=5), 3, -1, ErrorCode.POSITION),
    (step(step_id=4, start_position=3), 3, 4, ErrorCode.STALE_STEP),
    (step(shape=(1, 10, 8), start_position=45), 45, -1, ErrorCode.TOO_LONG),
])
def test_step_validation(msg, cached, last, code):
    t = table()
    s = add(t, open_msg())
    s.cache.length, s.last_step_id = cached, last
    with pytest.raises(ProtocolError) as info:
        t.validate_step(s, msg)
    assert info.value.code == code


def test_valid_step_and_rollback_allowed():
    t = table()
    s = add(t, open_msg())
    s.cache.length = 6
    assert t.validate_step(s, step(step_id=1, start_position=6)) == 2
    assert t.validate_step(s, step(step_id=1, start_position=4)) == 2  # rollback is legal


def rec(peer, start, end, throughput=10.0):
    return ServerRecord(peer_id=peer, model_id="m", start=start, end=end, n_blocks=30, throughput=throughput,
                        free_cache_tokens=1, max_session_length=1)


def test_choose_span_fills_gaps_first():
    assert choose_span(30, 10, []) == (0, 10)
    assert choose_span(30, 10, [rec("a", 0, 10)]) == (10, 20)
    assert choose_span(30, 10, [rec("a", 0, 10), rec("b", 10, 20)]) == (20, 30)
    # Everything covered once: reinforce the weakest (lowest throughput) window.
    assert choose_span(30, 10, [rec("a", 0, 10, 50), rec("b", 10, 20, 5), rec("c", 20, 30, 50)]) == (10, 20)


def test_idle_sessions_are_found_and_busy_ones_spared():
    t = table()
    idle = add(t, open_msg("i" * 16, max_length=10))
    busy = add(t, open_msg("b" * 16, max_length=10))
    fresh = add(t, open_msg("f" * 16, max_length=10))
    idle.last_active = busy.last_active = 100.0
    fresh.last_active = 195.0
    assert sorted(t.idle_sessions(timeout=60, now=200.0)) == ["b" * 16, "i" * 16]
    busy.lock._locked = True  # a step is in flight: never evict under it
    assert t.idle_sessions(timeout=60, now=200.0) == ["i" * 16]


def test_plan_move_refills_a_hole_and_never_opens_one():
    from swarmllm.server.block_selection import plan_move

    me = rec("me", 0, 10)
    # [10, 20) lost its only server; [0, 10) is also served by "a": move to the hole.
    assert plan_move(30, me, [rec("a", 0, 10), rec("c", 20, 30)]) == (10, 20)
    # I am the only server of [0, 10): stay, whatever else is missing.
    assert plan_move(30, me, [rec("c", 20, 30)]) is None


def test_plan_move_has_hysteresis():
    from swarmllm.server.block_selection import plan_move

    me = rec("me", 0, 10, throughput=10)
    others = [rec("a", 0, 10, 10), rec("b", 10, 20, 9), rec("c", 20, 30, 10)]
    assert plan_move(30, me, others) is None  # 9 -> 10 at best: not worth a reload
    others = [rec("a", 0, 10, 10), rec("b", 10, 20, 2), rec("c", 20, 30, 10)]
    assert plan_move(30, me, others) == (10, 20)  # the bottleneck goes from 2 to 12 tokens/s


def test_a_claimed_move_counts_as_covering_its_target_only():
    from swarmllm.server.block_selection import contested_by, plan_move, planning_view

    # Twins a and me serve [20, 30); [0, 10) lost its server. a has already claimed the hole.
    a = rec("a", 20, 30).model_copy(update={"moving_to": (0, 10)})
    me = rec("me", 20, 30)
    others = [a, rec("b", 10, 20)]
    # Seen through the claim, nothing is missing and a is leaving [20, 30): I stay.
    assert plan_move(30, me, planning_view(others)) is None
    # If we both claimed, the lower id goes first and the other withdraws.
    assert contested_by(me, (0, 10), others) == ["a"]
    assert contested_by(rec("0", 20, 30), (0, 10), others) == []
    assert contested_by(me, (10, 20), [a]) == []  # claims that do not overlap do not contest
