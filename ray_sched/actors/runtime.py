"""Starting Ray: one place for how ray_sched starts an embedded Ray or joins a cluster."""

from __future__ import annotations

import logging

import ray

#: Embedded Ray keeps idle worker processes instead of killing them after 1 s (Ray's
#: default). On a small machine a worker restart costs about a CPU-second and stalls
#: every actor for 100-300 ms; measured on 2 cores it raised the p99 scheduling overhead
#: from 6 ms to 100 ms. It applies to every engine (ray-default included) alike.
#:
#: Ray's worker cap is off: it counts running tasks per scheduling class, and when a local
#: scheduler dies with tasks in flight (``--chaos kill-local``, a lost actor) Ray 2.x keeps
#: counting them, so that every later task of that class waits for the cap's backoff and
#: its replacement runs one task at a time: 160 tasks of 50 ms took 32 s instead of 1.6 s
#: (measured here). ray_sched bounds concurrency with its own slots, so the cap adds
#: nothing. On a cluster started with `ray start`, set RAY_worker_cap_enabled=false there.
EMBEDDED_SYSTEM_CONFIG = {
    "idle_worker_killing_time_threshold_ms": 3_600_000,
    "worker_cap_enabled": False,
}
#: Idle workers kept beyond the CPU count (actors and tasks of several shapes).
EXTRA_IDLE_WORKERS = 8


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> bool:
    """Start an embedded Ray with ``num_cpus`` (or join ``address``) unless Ray is up.

    Returns:
        True when this call started or joined Ray (the caller then owns its shutdown).
    """
    if ray.is_initialized():
        return False
    if address is None:
        config = dict(EMBEDDED_SYSTEM_CONFIG)
        if num_cpus:
            config["num_workers_soft_limit"] = num_cpus + EXTRA_IDLE_WORKERS
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, _system_config=config)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True
