"""ray_sched: an ML-driven adaptive scheduler on Ray for telemetry processing."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import ray_sched` (and the CLI's --help) does not import Ray.
    if name in ("Scheduler", "TaskFuture"):
        from ray_sched import scheduler
        return getattr(scheduler, name)
    raise AttributeError(f"module 'ray_sched' has no attribute {name!r}")


__all__ = ["Scheduler", "TaskFuture", "__version__"]
