"""Stage actors: stateful processing objects run as scheduled tasks on each local scheduler."""

from __future__ import annotations

import functools

import pytest

from ray_sched.errors import ConfigError
from ray_sched.scheduler import Scheduler

pytestmark = pytest.mark.ray


class Counter:
    """A stage with state: counts the calls it served and the values it saw."""

    def __init__(self, start: int = 0):
        self.calls = start
        self.total = 0

    def add(self, value):
        self.calls += 1
        self.total += value
        return self.calls

    def fail(self):
        raise KeyError("stage failure")

    def close(self):
        return {"calls": self.calls, "total": self.total}


@pytest.fixture(scope="module")
def scheduler(ray_local):
    with Scheduler(policy="ml", slots=4, local_schedulers=2, model_dir=None,
                   stages={"count": functools.partial(Counter, start=0)}) as s:
        yield s


def test_stage_methods_run_as_tasks_and_keep_state_across_them(scheduler):
    futures = [scheduler.submit_stage("count", "add", i) for i in range(40)]
    results = [f.result(timeout=60) for f in futures]
    assert all(r >= 1 for r in results)
    closed = scheduler.close_stages()
    # One actor per slot (4), whose totals add up to every value sent exactly once.
    assert len(closed) == 4
    assert sum(c["total"] for c in closed) == sum(range(40))
    assert sum(c["calls"] for c in closed) == 40
    assert max(results) > 1  # an actor served more than one task: its state persisted


def test_stage_task_resolves_object_ref_arguments(scheduler):
    import ray
    ref = ray.put(5)
    assert scheduler.submit_stage("count", "add", ref).result(timeout=60) >= 1


def test_stage_exception_comes_back_with_its_type(scheduler):
    with pytest.raises(KeyError, match="stage failure"):
        scheduler.submit_stage("count", "fail").result(timeout=60)


def test_unknown_stage_is_refused_by_name(scheduler):
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        scheduler.submit_stage("nope", "add", 1)


def test_stage_tasks_have_their_kind_and_completion_record(scheduler):
    future = scheduler.submit_stage("count", "add", 1, features={"items": 3})
    completion = future.completion(timeout=60)
    assert completion.status == "ok" and completion.measured_runtime_s >= 0
