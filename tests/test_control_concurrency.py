"""Adaptive concurrency (issue 5): slots move within [min, max] from node CPU, memory stops
admission with hysteresis, every change is validated on the next window and rolled back if
throughput or JCT got worse, and the history of changes says why. A fake clock, no Ray."""

from __future__ import annotations

import math

import pytest

from ray_sched.control.concurrency import (
    BLOCK_WINDOWS,
    HISTORY_SIZE,
    ConcurrencyController,
    node_load,
)

WINDOW_S = 2.0


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(slots: float = 4, **kwargs) -> tuple[ConcurrencyController, FakeClock]:
    clock = FakeClock()
    return ConcurrencyController(slots, window_s=WINDOW_S, clock=clock, **kwargs), clock


def run_window(controller, clock, *, cpu=0.6, mem=0.5, queued=0, completions=0,
               jct_s=1.0) -> float | None:
    """One window of samples, then the tick that closes it."""
    controller.observe_load(cpu, mem)
    controller.observe_queue(queued)
    if completions:
        controller.observe_completions(completions, completions * jct_s)
    clock.t += WINDOW_S
    return controller.tick()


def grown(controller, clock) -> None:
    """A grow 4 -> 5 made on a window of 20 completions (10/s) with 1 s mean JCT."""
    assert run_window(controller, clock, cpu=0.2, queued=3, completions=20, jct_s=1.0) == 5.0


@pytest.mark.unit
def test_high_cpu_shrinks_by_one_step():
    controller, clock = make(4)
    assert run_window(controller, clock, cpu=0.9) == 3.0
    assert controller.slots == 3.0
    last = controller.history()[-1]
    assert (last["action"], last["old_slots"], last["new_slots"]) == ("shrink", 4.0, 3.0)
    assert last["reason"].startswith("cpu 0.90 > 0.8")
    assert last["cpu"] == pytest.approx(0.9)


@pytest.mark.unit
def test_low_cpu_with_queued_work_grows():
    controller, clock = make(4, step=2)
    assert run_window(controller, clock, cpu=0.2, queued=3) == 6.0
    last = controller.history()[-1]
    assert last["action"] == "grow" and "3 queued" in last["reason"]
    assert controller.stats()["n_grow"] == 1


@pytest.mark.unit
def test_low_cpu_without_queued_work_does_not_grow():
    controller, clock = make(4)
    assert run_window(controller, clock, cpu=0.1, queued=0) is None
    assert controller.slots == 4.0 and controller.history() == []


@pytest.mark.unit
def test_nothing_is_decided_before_the_window_ends():
    controller, clock = make(4)
    controller.observe_load(0.95, 0.5)
    clock.t = WINDOW_S - 0.01
    assert controller.tick() is None
    assert controller.slots == 4.0 and controller.stats()["windows"] == 0
    clock.t = WINDOW_S
    assert controller.tick() == 3.0


@pytest.mark.unit
def test_slots_never_leave_min_and_max():
    controller, clock = make(2, min_slots=1, max_slots=3)
    seen = []
    for _ in range(6):
        run_window(controller, clock, cpu=0.1, queued=10)   # grow, then an inconclusive verdict
        seen.append(controller.slots)
    assert max(seen) == 3.0
    for _ in range(8):
        run_window(controller, clock, cpu=0.99)
        seen.append(controller.slots)
    assert min(seen) == 1.0 and controller.slots == 1.0
    assert all(1.0 <= h["new_slots"] <= 3.0 for h in controller.history())
    assert controller.stats()["n_grow"] == 1 and controller.stats()["n_shrink"] == 2


@pytest.mark.unit
def test_a_change_followed_by_lower_throughput_is_rolled_back():
    controller, clock = make(4)
    grown(controller, clock)
    assert run_window(controller, clock, cpu=0.3, completions=10, jct_s=1.0) == 4.0
    last = controller.history()[-1]
    assert (last["action"], last["old_slots"], last["new_slots"]) == ("rolled-back", 4.0, 5.0)
    assert "throughput 10 -> 5/s" in last["reason"] and "jct 1 -> 1 s" in last["reason"]
    assert controller.stats()["n_rolled_back"] == 1 and controller.slots == 4.0


@pytest.mark.unit
def test_a_change_followed_by_higher_jct_is_rolled_back():
    controller, clock = make(4)
    grown(controller, clock)
    assert run_window(controller, clock, cpu=0.3, completions=20, jct_s=1.2) == 4.0
    last = controller.history()[-1]
    assert last["action"] == "rolled-back"
    assert "made jct worse" in last["reason"] and "jct 1 -> 1.2 s" in last["reason"]


@pytest.mark.unit
def test_a_change_that_did_no_harm_is_kept():
    controller, clock = make(4)
    grown(controller, clock)
    assert run_window(controller, clock, cpu=0.3, completions=24, jct_s=0.9) is None
    last = controller.history()[-1]
    assert (last["action"], last["new_slots"]) == ("kept", 5.0)
    assert "throughput 10 -> 12/s" in last["reason"]
    assert controller.slots == 5.0 and controller.stats()["n_kept"] == 1


@pytest.mark.unit
def test_a_loss_within_tolerance_is_kept():
    controller, clock = make(4, tolerance=0.05)
    assert run_window(controller, clock, cpu=0.2, queued=3, completions=100) == 5.0
    assert run_window(controller, clock, cpu=0.3, completions=96, jct_s=1.04) is None  # -4%, +4%
    assert controller.history()[-1]["action"] == "kept" and controller.slots == 5.0


@pytest.mark.unit
def test_a_window_with_too_few_completions_is_inconclusive_and_keeps_the_change():
    controller, clock = make(4)
    grown(controller, clock)
    assert run_window(controller, clock, cpu=0.3, completions=3, jct_s=9.0) is None
    last = controller.history()[-1]
    assert last["action"] == "kept" and last["reason"].startswith("inconclusive: 20 and 3")
    assert controller.slots == 5.0


@pytest.mark.unit
def test_a_rolled_back_direction_is_blocked_for_three_windows():
    controller, clock = make(4)
    grown(controller, clock)
    run_window(controller, clock, cpu=0.3, completions=10)          # rolled back to 4
    assert controller.stats()["blocked"] == "up"
    for _ in range(BLOCK_WINDOWS):
        assert run_window(controller, clock, cpu=0.1, queued=5) is None
    assert controller.stats()["n_blocked"] == BLOCK_WINDOWS
    assert controller.stats()["blocked"] is None
    assert run_window(controller, clock, cpu=0.1, queued=5) == 5.0


@pytest.mark.unit
def test_only_the_rolled_back_direction_is_blocked():
    controller, clock = make(4)
    grown(controller, clock)
    run_window(controller, clock, cpu=0.3, completions=10)          # rolled back to 4
    assert run_window(controller, clock, cpu=0.95) == 3.0


@pytest.mark.unit
def test_memory_stops_admission_and_resumes_with_hysteresis():
    controller, clock = make(4)
    controller.observe_load(0.5, 0.95)
    assert controller.tick() is None and controller.admitting is False
    clock.t += WINDOW_S
    controller.tick()                                               # a new window starts
    controller.observe_load(0.5, 0.87)                              # between resume and stop
    controller.tick()
    assert controller.admitting is False
    clock.t += WINDOW_S
    controller.tick()
    controller.observe_load(0.5, 0.80)
    controller.tick()
    assert controller.admitting is True
    clock.t += WINDOW_S
    controller.tick()
    controller.observe_load(0.5, 0.87)                              # between: stays admitting
    controller.tick()
    assert controller.admitting is True
    actions = [h["action"] for h in controller.history()]
    assert actions == ["stop-admitting", "resume-admitting"]
    assert "memory 0.95 >= 0.9" in controller.history()[0]["reason"]
    assert controller.slots == 4.0


@pytest.mark.unit
def test_no_growth_while_admission_is_stopped():
    controller, clock = make(4)
    assert run_window(controller, clock, cpu=0.1, mem=0.95, queued=5) is None
    assert controller.admitting is False and controller.slots == 4.0


@pytest.mark.unit
def test_a_demand_hint_pre_scales_toward_it_within_max():
    controller, clock = make(4, max_slots=8)
    controller.hint_demand(7)
    assert run_window(controller, clock, cpu=0.5) == 7.0
    last = controller.history()[-1]
    assert last["action"] == "pre-scale" and "forecast needs 7 slots" in last["reason"]
    capped, clock = make(4, max_slots=6)
    capped.hint_demand(20)
    assert run_window(capped, clock, cpu=0.5) == 6.0


@pytest.mark.unit
def test_a_demand_hint_does_not_pre_scale_a_busy_node_or_when_stale():
    busy, clock = make(4)
    busy.hint_demand(7)
    assert run_window(busy, clock, cpu=0.85) == 3.0
    stale, clock = make(4)
    stale.hint_demand(7)
    clock.t += 10 * WINDOW_S
    stale.tick()                                                    # an empty window
    assert run_window(stale, clock, cpu=0.5) is None


@pytest.mark.unit
def test_bad_samples_are_clipped_or_ignored():
    controller, clock = make(4)
    controller.observe_load(math.nan, math.nan)
    controller.observe_load(1.7, -0.2)
    controller.observe_completions(-3, 1.0)
    controller.observe_completions(2, math.nan)
    clock.t += WINDOW_S
    assert controller.tick() == 3.0
    stats = controller.stats()
    assert (stats["window_cpu"], stats["window_mem"]) == (1.0, 0.0)
    assert stats["window_throughput_tps"] == 0.0 and stats["window_jct_mean_s"] is None


@pytest.mark.unit
def test_default_bounds_are_half_and_double():
    assert ConcurrencyController(4).stats()["min_slots"] == 2.0
    assert ConcurrencyController(4).stats()["max_slots"] == 8.0
    assert ConcurrencyController(1).stats()["min_slots"] == 1.0
    assert ConcurrencyController(0.5).stats()["min_slots"] == 0.5


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, name", [
    ({"slots": 0}, "slots"),
    ({"slots": math.nan}, "slots"),
    ({"min_slots": 5}, "min_slots"),
    ({"min_slots": -1}, "min_slots"),
    ({"max_slots": 3}, "max_slots"),
    ({"window_s": 0}, "window_s"),
    ({"step": -1}, "step"),
    ({"cpu_high": 1.5}, "cpu_high"),
    ({"cpu_low": 0.9}, "cpu_low"),
    ({"mem_stop": 0}, "mem_stop"),
    ({"mem_resume": 0.95}, "mem_resume"),
    ({"tolerance": -0.1}, "tolerance"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    kwargs = {"slots": 4, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} must"):
        ConcurrencyController(kwargs.pop("slots"), **kwargs)


@pytest.mark.unit
def test_history_is_bounded_and_every_entry_has_a_reason():
    controller, clock = make(1, max_slots=1000)
    for _ in range(300):                               # one line a window: grow, kept, grow...
        run_window(controller, clock, cpu=0.1, queued=1)
    history = controller.history()
    assert len(history) == HISTORY_SIZE
    assert history[0]["wall"] == (300 - HISTORY_SIZE + 1) * WINDOW_S   # oldest dropped
    assert all(h["reason"] for h in history)
    assert history[-1]["action"] == "kept" and controller.slots == 151.0


@pytest.mark.unit
def test_node_load_returns_two_fractions():
    node_load()                                                     # first cpu reading is 0.0
    cpu, mem = node_load()
    assert isinstance(cpu, float) and isinstance(mem, float)
    assert 0.0 <= cpu <= 1.0 and 0.0 < mem <= 1.0
