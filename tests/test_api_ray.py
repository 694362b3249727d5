"""The Python API on a shared embedded Ray: real functions, real exceptions."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ray_sched.errors import ConfigError, SchedulerClosedError, TaskFailedError
from ray_sched.scheduler import Scheduler
from tests.conftest import RAY_SLOTS

pytestmark = pytest.mark.ray


class CustomError(Exception):
    pass


def square(x):
    return x * x


def fail_with_custom(message):
    raise CustomError(message)


def add(a, b=0):
    return a + b


@pytest.fixture(scope="module")
def scheduler(ray_local):
    with Scheduler(policy="priority", slots=RAY_SLOTS, local_schedulers=2) as s:
        yield s


def test_submit_returns_the_function_value(scheduler):
    assert scheduler.submit(add, 2, b=40, kind="math").result(timeout=60) == 42


def test_exception_reaches_the_caller_with_its_type_and_remote_traceback(scheduler):
    future = scheduler.submit(fail_with_custom, "boom")
    with pytest.raises(CustomError, match="boom") as caught:
        future.result(timeout=60)
    assert type(caught.value) is CustomError
    assert any("fail_with_custom" in note for note in caught.value.__notes__)
    completion = future.completion()
    assert completion.status == "failed" and "CustomError" in completion.error


def test_exception_method_returns_the_error(scheduler):
    assert isinstance(scheduler.submit(fail_with_custom, "x").exception(60), CustomError)
    assert scheduler.submit(square, 3).exception(60) is None


def test_map_yields_results_in_order(scheduler):
    assert list(scheduler.map(square, range(50), timeout=120)) == [x * x for x in range(50)]


def test_map_over_several_iterables(scheduler):
    assert list(scheduler.map(add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]


def test_many_concurrent_submitters_each_get_their_own_results(scheduler):
    results: dict[int, list[int]] = {}

    def submitter(k: int) -> None:
        futures = [scheduler.submit(add, k * 1000, b=i, tenant=f"t{k}") for i in range(25)]
        results[k] = [f.result(timeout=120) for f in futures]

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert results == {k: [k * 1000 + i for i in range(25)] for k in range(8)}


def test_future_is_awaitable(scheduler):
    async def main():
        return await asyncio.gather(*(scheduler.submit(square, i) for i in range(5)))
    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_object_ref_works_with_ray_get(scheduler, ray_local):
    future = scheduler.submit(square, 12)
    assert ray_local.get(future.object_ref(timeout=60)) == 144


def test_object_ref_arguments_are_resolved_like_ray_tasks(scheduler, ray_local):
    ref = ray_local.put(7)
    assert scheduler.submit(square, ref).result(timeout=60) == 49


def test_after_runs_the_child_when_its_parents_are_done(scheduler):
    import time

    def stamp(_):
        return time.time()

    parent_a = scheduler.submit(stamp, 0)
    parent_b = scheduler.submit(stamp, 1)
    child = scheduler.submit(stamp, 2, after=[parent_a, parent_b])
    child_start = child.completion(60).start_wall
    assert child_start >= parent_a.completion(60).finish_wall
    assert child_start >= parent_b.completion(60).finish_wall


def test_child_of_a_failed_parent_fails_without_running(scheduler):
    parent = scheduler.submit(fail_with_custom, "parent")
    child = scheduler.submit(square, 2, after=[parent])
    with pytest.raises(TaskFailedError, match="parent"):
        child.result(timeout=60)
    assert child.completion().attempts == 0


def test_story_tells_where_a_task_went(scheduler):
    future = scheduler.submit(square, 2, region="anywhere", task_id="story-me")
    future.result(timeout=60)
    events = [entry["event"] for entry in scheduler.story("story-me")]
    assert events == ["placed", "completed"]


@pytest.mark.parametrize("options, named", [
    ({"priority": 10}, "priority"), ({"priority": -1}, "priority"),
    ({"priority": 1.5}, "priority"), ({"deadline_s": 0}, "deadline_s"),
    ({"deadline_s": float("nan")}, "deadline_s"), ({"cpu": 0}, "cpu"),
])
def test_bad_options_are_refused_with_their_name(scheduler, options, named):
    with pytest.raises(ConfigError, match=named):
        scheduler.submit(square, 1, **options)


def test_a_task_id_cannot_be_used_twice(scheduler):
    scheduler.submit(square, 1, task_id="once").result(timeout=60)
    with pytest.raises(ConfigError, match="once"):
        scheduler.submit(square, 1, task_id="once")


def test_not_callable_is_refused(scheduler):
    with pytest.raises(ConfigError, match="callable"):
        scheduler.submit(42)


def test_a_baseline_is_not_a_scheduler_policy(ray_local):
    with pytest.raises(ConfigError, match="baseline"):
        Scheduler(policy="ray-default", slots=2)


def test_submit_after_shutdown_is_refused(ray_local):
    scheduler = Scheduler(policy="fifo", slots=2, warmup=False)
    assert scheduler.submit(square, 4).result(timeout=60) == 16
    scheduler.shutdown()
    scheduler.shutdown()  # twice is fine
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(square, 4)
