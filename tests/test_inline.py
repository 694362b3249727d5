"""Hybrid sync/async execution (issue 5, item 1): the inline-or-remote rule with a fake
clock, and on Ray: tiny tasks run on the local scheduler's threads once the learner knows
they are tiny, values and exceptions come back the same, and --no-inline turns it off."""

from __future__ import annotations

import time

import pytest

from ray_sched.control.inline import MAX_INLINE_P90_S, InlineDecider


@pytest.mark.unit
def test_a_task_predicted_below_the_launch_cost_runs_inline():
    decider = InlineDecider(initial_launch_cost_s=0.002, clock=lambda: 7.0)
    assert decider.choose("tiny", 0.001) is True
    assert decider.choose("big", 0.5) is False
    assert decider.choose("new", None) is False          # nothing predicted yet
    assert decider.stats()["inline"] == 1 and decider.stats()["remote"] == 2


@pytest.mark.unit
def test_the_threshold_follows_the_measured_launch_cost():
    decider = InlineDecider(initial_launch_cost_s=0.002, alpha=0.5)
    assert decider.choose("k", 0.004) is False
    for _ in range(10):
        decider.observe_launch(0.010)                     # a loaded node launches slowly
    assert decider.launch_cost_s_ == pytest.approx(0.010, rel=0.01)
    assert decider.choose("k", 0.004) is True
    decider.observe_launch(-1.0)                          # clock noise is ignored
    assert decider.n_launches_ == 10


@pytest.mark.unit
def test_every_mode_switch_is_kept_with_its_reason_once_per_change():
    decider = InlineDecider(initial_launch_cost_s=0.002, alpha=1.0, clock=iter(range(100)).__next__)
    decider.choose("k", 0.001)
    decider.choose("k", 0.001)                            # no change: no new entry
    decider.observe_launch(0.0005)
    decider.choose("k", 0.001)
    history = decider.history()
    assert [(h["kind"], h["mode"]) for h in history] == [("k", "inline"), ("k", "remote")]
    assert "p90 1 ms < launch cost 2 ms" in history[0]["reason"]
    assert ">= launch cost 0.5 ms" in history[1]["reason"]


@pytest.mark.unit
def test_disabled_or_long_tasks_never_run_inline():
    assert InlineDecider(enabled=False).choose("k", 1e-6) is False
    decider = InlineDecider(initial_launch_cost_s=10.0)
    assert decider.choose("k", MAX_INLINE_P90_S) is False


def nap(seconds: float) -> float:
    import time
    time.sleep(seconds)
    return seconds


def fail(message: str) -> None:
    raise KeyError(message)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("inline", [True, False])
def test_tiny_tasks_run_inline_once_learnt_and_results_are_the_same(ray_local, inline):
    from ray_sched import Scheduler
    from tests.conftest import RAY_SLOTS

    with Scheduler("ml", RAY_SLOTS, model_dir=None, fresh=True, inline=inline) as scheduler:
        first = [scheduler.submit(nap, 0.001, kind="tiny") for _ in range(60)]
        assert [f.result(timeout=60) for f in first] == [0.001] * 60
        later = [scheduler.submit(nap, 0.001, kind="tiny") for _ in range(60)]
        assert [f.result(timeout=60) for f in later] == [0.001] * 60
        with pytest.raises(KeyError, match="gone"):
            scheduler.submit(fail, "gone", kind="tiny").result(timeout=60)
        stats = next(iter(scheduler.inline_stats().values()))
    if inline:
        assert stats["inline"] >= 30 and stats["launches_measured"] >= 1
        assert [h["mode"] for h in stats["history"]][-1] == "inline"
    else:
        assert stats["inline"] == 0 and stats["remote"] == 121
        assert all(h["reason"] == "disabled" for h in stats["history"])


@pytest.mark.ray
def test_a_replay_summary_counts_tasks_run_inline_and_remote(ray_local, tmp_path):
    import json

    import pandas as pd

    from ray_sched.replay import replay
    from tests.conftest import RAY_SLOTS

    n = 400
    trace = pd.DataFrame({"task_id": [f"t{i}" for i in range(n)],
                          "arrival_s": [i * 0.004 for i in range(n)],
                          "runtime_s": 0.001, "kind": "tiny", "tenant": "a"})
    result = replay(trace, policy="ml", slots=RAY_SLOTS, show_progress=False, out=tmp_path,
                    model_options={"fresh": True, "model_dir": None})
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["n_ok"] == n
    assert summary["inline_tasks"] + summary["remote_tasks"] == n
    assert summary["inline_tasks"] > 0 and summary["launch_cost_s"] > 0


@pytest.mark.ray
def test_a_task_tree_mixes_a_remote_parent_with_inline_children(ray_local):
    from ray_sched import Scheduler
    from tests.conftest import RAY_SLOTS

    with Scheduler("ml", RAY_SLOTS, model_dir=None, fresh=True) as scheduler:
        # Teach the learner both kinds first: tiny ones and long ones.
        warm = ([scheduler.submit(nap, 0.001, kind="tiny") for _ in range(60)]
                + [scheduler.submit(nap, 0.2, kind="parent") for _ in range(4)])
        [f.result(timeout=60) for f in warm]
        # Predictions come from the learner's latest snapshot: wait for one that has learnt
        # both kinds (a new kind makes one due at once).
        deadline = time.monotonic() + 60
        while (scheduler.stats()["model"] or {}).get("n_observed", 0) < len(warm):
            assert time.monotonic() < deadline, scheduler.stats()["model"]
            time.sleep(0.05)
        before = next(iter(scheduler.inline_stats().values()))
        parent = scheduler.submit(nap, 0.2, kind="parent")
        children = [scheduler.submit(nap, 0.001, kind="tiny", after=[parent])
                    for _ in range(20)]
        assert [c.result(timeout=60) for c in children] == [0.001] * 20
        assert parent.result(timeout=60) == 0.2
        after = next(iter(scheduler.inline_stats().values()))
    assert after["remote"] - before["remote"] >= 1      # the parent, at least
    assert after["inline"] - before["inline"] >= 15     # most of its tiny children
