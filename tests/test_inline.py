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

    # Without launch batches, which would take most of the 60 queued tasks together.
    with Scheduler("ml", RAY_SLOTS, model_dir=None, fresh=True, inline=inline,
                   controls={"batch": False}) as scheduler:
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
    assert summary["inline_tasks"] > 0 and summary["launch_cost_s"] > 0, {
        k: summary.get(k) for k in ("inline_tasks", "remote_tasks", "launch_cost_s",
                                    "launch_batches")}


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


def fail_on(value: int, bad: int) -> int:
    if value == bad:
        raise ValueError(f"call {value} fails")
    return value * 2


@pytest.mark.ray
def test_a_backlog_of_tiny_tasks_shares_launches_each_timed_alone(ray_local, tmp_path):
    import json

    import numpy as np
    import pandas as pd

    from ray_sched.replay import replay
    from tests.conftest import RAY_SLOTS

    n = 800
    rng = np.random.default_rng(5)
    trace = pd.DataFrame({"task_id": [f"t{i}" for i in range(n)],
                          "arrival_s": np.sort(rng.uniform(0, 0.2, n)),
                          "runtime_s": rng.uniform(0.0005, 0.003, n),
                          "kind": "tiny", "tenant": "a"})
    summaries = {}
    for batch in (True, False):
        result = replay(trace, policy="fifo", slots=RAY_SLOTS, inline=False,
                        controls={"batch": batch}, show_progress=False,
                        out=tmp_path / str(batch))
        summaries[batch] = json.loads((result.out_dir / "summary.json").read_text())
        assert summaries[batch]["n_ok"] == n
        done = result.results.set_index("task_id").loc[trace["task_id"]]
        # Each task is timed on its own, batched or not: at least its own runtime (a sleep
        # overruns on a loaded machine, so no upper bound here).
        assert (done["measured_runtime_s"].to_numpy()
                >= trace["runtime_s"].to_numpy() - 1e-3).all()
        # The tasks of one launch run back to back: one starts as the one before finishes.
        finishes = np.sort(done["finish_s"].to_numpy())
        starts = done["start_s"].to_numpy()
        before = np.clip(np.searchsorted(finishes, starts, side="right") - 1, 0, None)
        summaries[batch]["back_to_back"] = int(
            (np.abs(starts - finishes[before]) < 2e-4).sum())
    batched = summaries[True]
    assert batched["launch_batches"] > 0
    assert batched["batched_tasks"] >= 2 * batched["launch_batches"]
    assert batched["back_to_back"] >= 0.5 * (batched["batched_tasks"]
                                             - batched["launch_batches"])
    assert summaries[False]["launch_batches"] == 0 and summaries[False]["batched_tasks"] == 0
    assert summaries[False]["back_to_back"] < batched["back_to_back"] / 2


@pytest.mark.ray
def test_batched_calls_and_map_chunks_give_each_call_its_own_value_or_error(ray_local):
    from ray_sched import Scheduler
    from ray_sched.errors import ConfigError
    from tests.conftest import RAY_SLOTS

    with Scheduler("fifo", RAY_SLOTS, inline=False) as scheduler:
        # A backlog of one kind: once a few have run, the rest go out several per launch.
        futures = [scheduler.submit(fail_on, i, 150, kind="tiny") for i in range(300)]
        for i, future in enumerate(futures):
            if i == 150:
                with pytest.raises(ValueError, match="call 150 fails"):
                    future.result(timeout=60)
            else:
                assert future.result(timeout=60) == 2 * i
        stats = next(iter(scheduler.inline_stats().values()))
        assert stats["batches"] > 0 and stats["remote"] == 300
        assert list(scheduler.map(fail_on, range(100), [-1] * 100, chunksize=7)) == [
            2 * i for i in range(100)]
        assert list(scheduler.map(fail_on, range(20), [-1] * 20)) == [2 * i for i in range(20)]
        chunks = scheduler.map(fail_on, range(10), [4] * 10, chunksize=3)
        assert [next(chunks) for _ in range(3)] == [0, 2, 4]
        with pytest.raises(ValueError, match="call 4 fails"):
            list(chunks)
        for bad in (0, -2, 1.5, True, "4"):
            with pytest.raises(ConfigError, match="chunksize"):
                scheduler.map(fail_on, range(3), [0] * 3, chunksize=bad)
