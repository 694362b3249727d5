"""The control plane's CPU priority: ray_sched's actors (global and local schedulers,
learner, monitor) run at a raised priority where the OS allows it.

Why: their work per task is small but on the critical path of every task; on a busy node
(CPU-bound tasks, a neighbour's job) at equal priority each decision waits behind the
busy processes' time slices and the queue of decisions grows. At a higher priority the
scheduler's few milliseconds per batch run as soon as they are due, and the tasks get the
rest of the CPU.

Raising priority (a negative nice value) needs root or CAP_SYS_NICE on Linux. Where it is
not allowed (an unprivileged container, a cluster whose nodes run Ray as a plain user),
the actors keep the priority they started with, the refusal is reported once per actor
in its ``info``, and scheduling works as before. On Linux a nice value belongs to a thread,
so every thread of the process is set (Ray's own I/O threads included: an actor call
waits on them too).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The nice value our actors ask for: well above normal work (0), below the kernel's own
#: threads; a CPU-bound task at nice 0 then gets about a tenth of a core's share where one
#: of our actors wants to run.
CONTROL_NICE = -10
#: The range of nice values on Linux.
NICE_RANGE = (-20, 19)


def set_process_nice(nice: int, pid: int | None = None) -> dict:
    """Set the nice value of every thread of a process (default: this one).

    Args:
        nice: the value wanted, within :data:`NICE_RANGE`; a value above the current one
            lowers the priority (always allowed).

    Returns:
        ``{"nice": value now, "applied": bool, "reason": text when not applied}``.

    Raises:
        ValueError: ``nice`` outside :data:`NICE_RANGE`.
    """
    low, high = NICE_RANGE
    if isinstance(nice, bool) or not isinstance(nice, int) or not low <= nice <= high:
        raise ValueError(f"nice must be an integer in [{low}, {high}], got {nice!r}")
    pid = os.getpid() if pid is None else pid
    if not hasattr(os, "setpriority"):
        return {"nice": None, "applied": False, "reason": "this OS has no setpriority"}
    threads = _thread_ids(pid)
    try:
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        return {"nice": os.getpriority(os.PRIO_PROCESS, pid), "applied": False,
                "reason": "not permitted (needs root or CAP_SYS_NICE); priority unchanged"}
    except ProcessLookupError:  # a thread ended meanwhile: the others are set
        pass
    return {"nice": os.getpriority(os.PRIO_PROCESS, pid), "applied": True, "reason": ""}


def _thread_ids(pid: int) -> list[int]:
    """Every thread of ``pid`` (Linux: /proc/PID/task); elsewhere the process alone."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        return [int(entry.name) for entry in tasks.iterdir()]
    except OSError:
        return [pid]
