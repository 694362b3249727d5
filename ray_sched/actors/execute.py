"""The Ray tasks that do the work: synthetic sleeps for replays, user calls for the API.

Each returns its own start and finish wall times, measured on the worker that
ran it, so that every engine (ours, ray-default, dask) is timed the same way.
"""

from __future__ import annotations

import asyncio
import pickle
import time
import traceback
from collections.abc import Callable
from typing import Any

import ray

from ray_sched.work import synthetic_work

#: Ray retries a task whose worker process died (not a user exception) this many times.
SYSTEM_RETRIES = 3


class RaisedError:
    """A user exception carried back from a worker, with its remote traceback text."""

    def __init__(self, error: BaseException, traceback_text: str):
        try:
            pickle.dumps(error)
            self.error: BaseException | None = error
        except Exception:  # an unpicklable exception still reaches the caller as text
            self.error = None
        self.type_name = f"{type(error).__module__}.{type(error).__qualname__}"
        self.message = str(error)
        self.traceback_text = traceback_text

    def reraise(self) -> None:
        error = self.error
        if error is None:
            error = RuntimeError(f"{self.type_name}: {self.message}")
        note = f"Remote traceback (on the ray_sched worker):\n{self.traceback_text}"
        if note not in getattr(error, "__notes__", ()):
            error.add_note(note)
        raise error


def user_call(payload: tuple) -> tuple[tuple[float, float, str], Any]:
    """Run ``fn(*args, **kwargs)``; top-level ObjectRef arguments are resolved first, as Ray does.

    Returns:
        ((start, finish, error_text), value or RaisedError)
    """
    fn, args, kwargs = payload
    args = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
    kwargs = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in kwargs.items()}
    start = time.time()
    try:
        value = fn(*args, **kwargs)
        error = ""
    except Exception as exc:  # noqa: BLE001 - the user's exception travels to the caller
        text = traceback.format_exc()
        value = RaisedError(exc, text)
        error = f"{type(exc).__name__}: {exc}"
    return (start, time.time(), error), value


def call_chunk(fn: Callable, calls: list[tuple]) -> list:
    """``[fn(*args) for args in calls]``, ObjectRef arguments resolved first: one task of
    ``Scheduler.map(..., chunksize=k)``."""
    return [fn(*[ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args])
            for args in calls]


@ray.remote(num_cpus=0)
class StageActor:
    """One worker of a processing stage: hosts the object ``factory()`` builds and runs its
    methods as tasks. The local scheduler that owns it bounds how many run at once (its
    slots), so the actor itself reserves no CPU; its state (a sampler's running quantiles, a
    sink's buffer) lives as long as the actor."""

    def __init__(self, factory):
        self._stage = factory()

    def ping(self) -> bool:
        return True

    @ray.method(num_returns=2)
    def call(self, payload: tuple) -> tuple[tuple[float, float, str], Any]:
        """Run ``stage.<method>(*args, **kwargs)``; the same result shape as :func:`user_call`."""
        method, args, kwargs = payload
        return user_call((getattr(self._stage, method), args, kwargs))

    def close(self) -> Any:
        """Call the stage's ``close()`` when it has one (flush buffers before the actor goes)."""
        close = getattr(self._stage, "close", None)
        return close() if callable(close) else None


def run_inline(payload, runtime_s: float | None, work: str = "sleep") -> tuple[tuple, Any]:
    """A task run on the local scheduler's own thread (the hybrid path): synthetic work
    when there is no payload, else the user's call. Returns (meta, ObjectRef of the value
    or None), the meta as :func:`user_call`'s."""
    if payload is None:
        start, finish = synthetic_work(runtime_s or 0.0, work=work)
        return (start, finish, ""), None
    meta, value = user_call(ray.get(payload) if isinstance(payload, ray.ObjectRef)
                            else payload)
    return meta, ray.put(value)


def synthetic_batch(items: list[tuple[float, str]]) -> list[tuple[float, float, str]]:
    """Several synthetic tasks one after another in one Ray task (a launch batch): each
    ``(runtime_s, work)`` gets its own ``(start, finish, error_text)``."""
    metas = []
    for runtime_s, work in items:
        try:
            start, finish = synthetic_work(runtime_s, work=work)
            metas.append((start, finish, ""))
        except Exception as exc:  # noqa: BLE001 - one task's error is that task's alone
            now = time.time()
            metas.append((now, now, f"{type(exc).__name__}: {exc}"))
    return metas


def user_call_batch(payloads: list) -> tuple:
    """Several user calls one after another in one Ray task (a launch batch); payloads put
    in the object store are fetched together first.

    Returns:
        (metas, value_1, ..., value_n): each meta as :func:`user_call`'s, each value its
        own return (an ObjectRef of its own at the caller).
    """
    refs = [payload for payload in payloads if isinstance(payload, ray.ObjectRef)]
    fetched = iter(ray.get(refs)) if refs else iter(())
    results = [user_call(next(fetched) if isinstance(payload, ray.ObjectRef) else payload)
               if payload is not None else ((time.time(), time.time(), "no payload"), None)
               for payload in payloads]
    return ([meta for meta, _ in results], *[value for _, value in results])


def run_inline_batch(items: list[tuple]) -> list:
    """:func:`run_inline` for each ``(payload, runtime_s, work)``, one after another; an
    item that raises gives its exception in its place."""
    results = []
    for payload, runtime_s, work in items:
        try:
            results.append(run_inline(payload, runtime_s, work))
        except Exception as exc:  # noqa: BLE001 - that task fails, not the batch
            results.append(exc)
    return results


run_synthetic = ray.remote(max_retries=SYSTEM_RETRIES)(synthetic_work)
run_user_call = ray.remote(num_returns=2, max_retries=SYSTEM_RETRIES)(user_call)
run_synthetic_batch = ray.remote(max_retries=SYSTEM_RETRIES)(synthetic_batch)
run_user_call_batch = ray.remote(max_retries=SYSTEM_RETRIES)(user_call_batch)


#: Each warm-up task sleeps this long, so that ``n`` of them overlap and ``n`` workers start.
WARMUP_TASK_S = 0.3


def _warm_refs(n: int, options: dict | None) -> list:
    return [run_synthetic.options(**(options or {})).remote(WARMUP_TASK_S) for _ in range(n)]


def warm_workers(n: int, options: dict | None = None, timeout_s: float = 120.0) -> None:
    """Start ``n`` worker processes (and import this module in them) before timing starts."""
    ray.get(_warm_refs(n, options), timeout=timeout_s)


async def warm_workers_async(n: int, options: dict | None = None,
                             timeout_s: float = 120.0) -> None:
    """:func:`warm_workers` for an async actor: awaited on its event loop (a blocking
    ``ray.get`` there, even from an executor thread, makes Ray warn on every start)."""
    await asyncio.wait_for(asyncio.gather(*_warm_refs(n, options)), timeout_s)


@ray.remote(num_cpus=0, max_retries=0)
def kill_node() -> None:
    """Chaos (``--chaos kill-node``): kill the raylet of the node this runs on, which takes
    the node and everything on it down, as a lost machine would. Launched pinned to the
    node; its result never comes back."""
    import os
    import signal

    import psutil

    for parent in psutil.Process(os.getpid()).parents():
        if parent.name() == "raylet" or "raylet" in " ".join(parent.cmdline()[:1]):
            os.kill(parent.pid, signal.SIGKILL)
            return
    raise RuntimeError("kill-node: no raylet among this worker's parent processes")
