"""The adaptive controllers wired into the actors, on one embedded Ray: work stealing moves
queued tasks from a backlogged local scheduler to an idle one (each task still recorded
once), adaptive concurrency and the forecast report what they did."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from ray_sched.replay import replay

pytestmark = pytest.mark.ray


def lopsided_trace(n: int = 60, seed: int = 4) -> pd.DataFrame:
    """Every task at once, of one kind, half of them 20 ms and half 0.6 s in random order:
    placed on equal (prior) predictions, one local scheduler's share takes longer, and the
    other runs dry while it still has a queue."""
    rng = np.random.default_rng(seed)
    runtimes = rng.permutation(np.repeat([0.02, 0.6], n // 2))
    return pd.DataFrame({"task_id": [f"t{i:03d}" for i in range(n)], "arrival_s": 0.0,
                         "runtime_s": runtimes, "kind": "k", "tenant": "a"})


@pytest.mark.parametrize("steal", [True, False])
def test_an_idle_local_scheduler_steals_queued_tasks_and_each_is_recorded_once(
        ray_local, tmp_path, steal):
    trace = lopsided_trace()
    result = replay(trace, policy="ml", slots=4, local_schedulers=2, show_progress=False,
                    out=tmp_path, controls={"steal": steal, "forecast": False},
                    inline=False, model_options={"fresh": True, "model_dir": None})
    results = result.results
    assert len(results) == len(trace) and results["task_id"].is_unique
    assert (results["status"] == "ok").all() and (results["attempts"] == 1).all()
    decisions = pd.read_parquet(tmp_path / "decisions.parquet")
    stolen = decisions[decisions["event"] == "stolen"]
    if steal:
        assert result.summary["tasks_stolen"] >= 1
        assert len(stolen) == result.summary["tasks_stolen"]
        assert stolen["reason"].str.startswith("from ").all()
        # A stolen task ran where it was moved to.
        moved_to = stolen.groupby("task_id")["target"].last()
        ran_on = results.set_index("task_id")["worker"]
        assert (ran_on[moved_to.index] == moved_to).all()
    else:
        assert result.summary["tasks_stolen"] == 0 and stolen.empty


def test_adaptive_concurrency_and_the_forecast_report_what_they_did(ray_local, tmp_path):
    from ray_sched import Scheduler

    n = 240
    trace = pd.DataFrame({"task_id": [f"t{i}" for i in range(n)],
                          "arrival_s": np.linspace(0.0, 5.0, n), "runtime_s": 0.05,
                          "kind": np.where(np.arange(n) % 2, "a", "b"), "tenant": "x"})
    from ray_sched.engines import SchedulerEngine

    scheduler = Scheduler("ml", 4, local_schedulers=2, model_dir=None, fresh=True,
                          controls={"adaptive": True, "min_slots": 0.5, "max_slots": 1.5})
    try:
        result = replay(trace, policy="ml", slots=4, engine=SchedulerEngine(scheduler),
                        show_progress=False)
        stats = scheduler.control_stats()
        # A forecast of more than its slots pre-warms worker processes up to its maximum.
        import ray
        local = ray.get(scheduler._global.local_handles.remote(), timeout=30)[0]
        ray.get(local.hint_demand.remote(5.0), timeout=30)
        deadline = time.monotonic() + 60
        while (time.monotonic() < deadline
               and ray.get(local.concurrency_stats.remote(), timeout=30)["warm_workers"] != 3):
            time.sleep(0.2)
        assert ray.get(local.concurrency_stats.remote(), timeout=30)["warm_workers"] == 3
    finally:
        scheduler.shutdown()
    assert result.summary["n_ok"] == n
    assert stats["controls"]["adaptive"] is True
    for name, one in stats["concurrency"].items():
        assert one is not None, name
        assert one["windows"] >= 1 and one["min_slots"] == 1.0 and one["max_slots"] == 3.0
        assert one["min_slots"] <= one["slots"] <= one["max_slots"]
        assert all(change["reason"] for change in one["history"])
    forecast = stats["forecast"]
    assert forecast["arrivals"] == n and forecast["windows_closed"] >= 3
    assert forecast["error"]["total"]["rate_mae"] is not None
    assert result.summary["forecast_rate_mae"] >= 0
    assert result.summary["slot_changes"] >= 0 and "tasks_stolen" in result.summary
