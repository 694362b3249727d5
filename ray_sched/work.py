"""Synthetic work shared by every engine (ours, ray-default, dask), and the busy
neighbours benchmarks put beside a replay. No Ray imports here, so that a Dask worker can
run it without loading Ray."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The kinds of synthetic work a replay can run: ``sleep`` waits ``runtime_s`` of wall
#: time (I/O-bound work: a slot per task costs no CPU), ``cpu`` burns ``runtime_s`` of CPU
#: time on the thread that runs it (CPU-bound work: it competes with everything on the
#: node, the schedulers included).
WORK_KINDS = ("sleep", "cpu")
#: A busy loop checks its CPU clock after this many iterations (~20 µs): cheap, and
#: exact to well under a millisecond.
_SPIN_CHECK_EVERY = 200


def synthetic_work(runtime_s: float, *_parents: Any, work: str = "sleep"
                   ) -> tuple[float, float]:
    """Run ``runtime_s`` seconds of synthetic work: the replay's stand-in for a task's work.

    Extra positional arguments (parents' results) are accepted and ignored, so that
    engines can express dependencies by passing them.

    Args:
        runtime_s: seconds of wall time (``sleep``) or of this thread's CPU time (``cpu``).
        work: one of :data:`WORK_KINDS`.

    Returns:
        (start, finish) wall-clock seconds (``time.time()``) on the worker.

    Raises:
        ValueError: an unknown ``work``.
    """
    start = time.time()
    if work == "sleep":
        time.sleep(runtime_s)
    elif work == "cpu":
        burn_cpu(runtime_s)
    else:
        raise ValueError(f"work must be one of {', '.join(WORK_KINDS)}, got {work!r}")
    return start, time.time()


def burn_cpu(cpu_s: float) -> int:
    """Spin until this thread has used ``cpu_s`` seconds of CPU time; returns the
    iterations (so that the loop cannot be optimised away by any interpreter)."""
    deadline = time.thread_time() + max(0.0, cpu_s)
    spins = 0
    while time.thread_time() < deadline:
        for _ in range(_SPIN_CHECK_EVERY):
            spins += 1
    return spins


def _spin_forever() -> None:  # pragma: no cover - runs in a child process, killed by its parent
    while True:
        burn_cpu(1.0)


@contextmanager
def busy_neighbours(n: int) -> Iterator[list[int]]:
    """``n`` CPU-bound processes at normal priority beside whatever runs inside the block
    (a contended node: another job, or CPU-bound tasks, sharing its cores); yields their
    pids and stops them on exit.

    Raises:
        ValueError: ``n`` < 0.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"busy neighbours must be a whole number >= 0, got {n!r}")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_spin_forever, daemon=True, name=f"busy-{i}")
                 for i in range(n)]
    for process in processes:
        process.start()
        # Normal priority whatever the parent's: a neighbour is an ordinary process.
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, 0)
        except OSError:
            pass
    try:
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.join(timeout=10)
