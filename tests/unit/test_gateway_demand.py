"""The gateway's demand counter: rates over a sliding window, queue length, models forgotten when quiet."""

from __future__ import annotations

from swarmllm.gateway.demand import DemandCounter


def test_rates_cover_the_window_and_forget_older_requests():
    now = [0.0]
    counter = DemandCounter(window=60.0, clock=lambda: now[0])
    for t in range(10):
        now[0] = t
        counter.arrived("smollm2-135m", 100)
    counter.arrived("gemma3-270m", 50)
    counter.started("gemma3-270m")
    assert counter.rates() == [("gemma3-270m", 1.0, 50.0, 1), ("smollm2-135m", 10.0, 1000.0, 0)]
    now[0] = 65.0  # the smollm2 requests at t = 0..4 fell out of the window
    assert counter.rates() == [("gemma3-270m", 1.0, 50.0, 1), ("smollm2-135m", 5.0, 500.0, 0)]
    counter.finished("gemma3-270m")
    counter.finished("gemma3-270m")  # a double release never goes below zero
    now[0] = 200.0
    assert counter.rates() == []
