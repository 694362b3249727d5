"""The learner on Ray: predictions on every task, checkpoints, restart and fallback."""

from __future__ import annotations

import time

import pytest

from ray_sched.errors import ConfigError
from ray_sched.learner import latest_checkpoint
from ray_sched.replay import replay
from ray_sched.scheduler import Scheduler
from tests.conftest import RAY_SLOTS, small_trace

pytestmark = pytest.mark.ray


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def test_ml_replay_predicts_every_task_and_writes_a_checkpoint(ray_local, tmp_path):
    frame = small_trace(120, tree_share=0.1)
    result = replay(frame, policy="ml", slots=RAY_SLOTS, show_progress=False,
                    model_options={"model_dir": str(tmp_path / "models"), "fresh": True})
    results, summary = result.results, result.summary
    assert result.ok
    assert results["predicted_runtime_s"].notna().all()
    assert (results["predicted_p90_s"] >= results["predicted_runtime_s"]).all()
    assert summary["prediction_mae_s"] is not None and summary["prediction_p90_coverage"] > 0
    assert summary["learner_checkpoint"] and latest_checkpoint(tmp_path / "models")
    assert summary["learner_fallback_batches"] == 0


def test_a_new_scheduler_starts_from_the_latest_checkpoint_unless_fresh(ray_local, tmp_path):
    models = tmp_path / "models"
    with Scheduler(policy="ml", slots=RAY_SLOTS, model_dir=str(models), fresh=True,
                   warmup=False) as scheduler:
        assert scheduler.submit(sleep_for, 0.01, kind="nap").result(timeout=60) == 0.01
    first = latest_checkpoint(models)
    assert first is not None
    with Scheduler(policy="ml", slots=RAY_SLOTS, model_dir=str(models), warmup=False) as again:
        again.submit(sleep_for, 0.01, kind="nap").result(timeout=60)
    assert again.learner_info["loaded_from"] == str(first)
    # Our actors ask for a raised priority: applied, or refused with the reason.
    priority = again.learner_info["priority"]
    assert ((priority["applied"] and priority["nice"] == -10)
            or "not permitted" in priority["reason"]), priority
    with Scheduler(policy="ml", slots=RAY_SLOTS, model_dir=str(models), fresh=True,
                   warmup=False) as fresh:
        fresh.submit(sleep_for, 0.01).result(timeout=60)
    assert fresh.learner_info["loaded_from"] is None


def test_a_missing_model_path_is_refused_naming_it(ray_local, tmp_path):
    with pytest.raises(ConfigError, match="no-such-model"):
        Scheduler(policy="ml", slots=2, model=str(tmp_path / "no-such-model"), warmup=False)


def test_scheduling_goes_on_when_the_learner_dies_and_it_restarts_from_its_checkpoint(
        ray_local, tmp_path):
    with Scheduler(policy="ml", slots=RAY_SLOTS, model_dir=str(tmp_path / "models"),
                   fresh=True, checkpoint_every=10, warmup=False) as scheduler:
        before = [scheduler.submit(sleep_for, 0.01, kind="nap") for _ in range(30)]
        assert [f.result(timeout=60) for f in before] == [0.01] * 30
        learner = ray_local.get(scheduler._global.learner_actor.remote())
        ray_local.kill(learner, no_restart=False)
        after = [scheduler.submit(sleep_for, 0.01, kind="nap") for _ in range(30)]
        assert [f.result(timeout=120) for f in after] == [0.01] * 30
        deadline = time.monotonic() + 60
        info = None
        while time.monotonic() < deadline:  # the restarted learner answers again
            try:
                info = ray_local.get(scheduler._global.learner_info.remote(), timeout=10)
                break
            except Exception:  # noqa: BLE001 - still restarting
                time.sleep(0.2)
        assert info is not None and info["loaded_from"] is not None


def test_the_learner_actor_publishes_snapshots_that_predict_as_it_does(ray_local, tmp_path):
    import ray

    from ray_sched.actors.learner_actor import LearnerActor
    from ray_sched.trace import frame_to_tasks

    tasks = frame_to_tasks(small_trace(200, tree_share=0.0))
    runtimes = [0.01 + 0.002 * (index % 7) for index in range(len(tasks))]
    actor = LearnerActor.options(num_cpus=0).remote(model_dir=str(tmp_path / "models"),
                                                    load=None)
    try:
        first = ray.get(actor.snapshot.remote(), timeout=60)
        assert first.version == 1 and first.n_observed == 0
        # Completions in batches of 10, as the global scheduler sends them, until a
        # snapshot comes back (never two within SnapshotSchedule's min_gap_s).
        updates, sent, deadline = [], 0, time.monotonic() + 60
        while not any(updates) or sent < 100:
            assert time.monotonic() < deadline, "no snapshot published within 60 s"
            start = sent % len(tasks)
            updates.append(ray.get(actor.observe.remote(tasks[start:start + 10],
                                                        runtimes[start:start + 10]),
                                   timeout=60))
            sent += 10
        published = [update for update in updates if update is not None]
        # Not one per call: a snapshot only when the schedule says one is due.
        assert 1 <= len(published) < len(updates)
        assert [u.version for u in published] == list(range(2, 2 + len(published)))
        assert len({u.incarnation for u in published + [first]}) == 1
        assert published[-1].n_observed <= sent
        latest = ray.get(actor.snapshot.remote(), timeout=60)
        assert latest.n_observed == sent and latest.recent_error is not None
        model = ray.get(latest.model, timeout=60)
        ours = model.predict(tasks[:30])
        theirs = ray.get(actor.predict.remote(tasks[:30]), timeout=60)
        assert list(ours.p50_s) == pytest.approx(list(theirs.p50_s))
    finally:
        ray.kill(actor)


def test_the_snapshot_in_use_catches_up_with_every_completion_after_a_lull(ray_local):
    with Scheduler(policy="ml", slots=RAY_SLOTS, model_dir=None, fresh=True,
                   warmup=False) as scheduler:
        futures = [scheduler.submit(sleep_for, 0.005, kind="nap") for _ in range(70)]
        assert [f.result(timeout=60) for f in futures] == [0.005] * 70
        # Nothing arrives after these: the last completions reach the snapshot in use
        # anyway (within CATCH_UP_AFTER_S), not only when more work comes.
        deadline = time.monotonic() + 60
        while (scheduler.stats()["model"] or {}).get("n_observed", 0) < 70:
            assert time.monotonic() < deadline, scheduler.stats()["model"]
            time.sleep(0.1)
        assert scheduler.stats()["model"]["n_observed"] == 70
