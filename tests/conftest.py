"""Shared fixtures: one Ray instance per module, and small traces built in code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Slots of the shared Ray fixture: sleep-based work lets 8 run on 2 cores.
RAY_SLOTS = 8


@pytest.fixture(scope="module")
def ray_local():
    """An embedded Ray with RAY_SLOTS CPUs, shared by the tests of one module."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    # Workers inherit the environment: let them import functions defined in test modules.
    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    from ray_sched.actors.runtime import ensure_ray
    ensure_ray(RAY_SLOTS)
    yield ray
    ray.shutdown()


def small_trace(n: int = 300, *, seed: int = 7, load: float = 0.8, slots: int = RAY_SLOTS,
                mean_runtime_s: float = 0.05, tree_share: float = 0.2) -> pd.DataFrame:
    """A trace with every optional column: kinds, tenants, two regions, priorities,
    deadlines, some cpu=2 tasks, and parent trees with a DAG join."""
    rng = np.random.default_rng(seed)
    runtime = rng.lognormal(np.log(mean_runtime_s), 0.8, n)
    cpu = np.where(rng.random(n) < 0.1, 2.0, 1.0)
    gaps = rng.exponential((runtime * cpu).mean() / (load * slots), n)
    arrival = np.cumsum(gaps) - gaps[0]
    ids = [f"t{i:04d}" for i in range(n)]
    parents = [""] * n
    for i in range(2, n):
        if rng.random() < tree_share:
            parents[i] = ids[int(rng.integers(max(0, i - 20), i))]
            if rng.random() < 0.2:  # a DAG join of two earlier tasks
                other = ids[int(rng.integers(max(0, i - 20), i))]
                if other != parents[i]:
                    parents[i] += ";" + other
    return pd.DataFrame({
        "task_id": ids, "arrival_s": arrival, "runtime_s": runtime,
        "kind": rng.choice(["traces", "metrics", "logs"], n, p=[0.5, 0.3, 0.2]),
        "tenant": rng.choice(["acme", "globex", "initech"], n, p=[0.6, 0.3, 0.1]),
        "region": rng.choice(["eu", "us"], n),
        "priority": rng.choice([0, 0, 0, 5, 9], n),
        "deadline_s": np.where(rng.random(n) < 0.5, 0.5, np.nan),
        "parent_id": parents, "cpu": cpu,
        "payload_bytes": rng.integers(100, 100_000, n),
    })


@pytest.fixture(scope="session")
def trace_200(tmp_path_factory) -> Path:
    # 200 tasks: every policy replays it on Ray, where 2 cores launch ~60 tasks a second.
    path = tmp_path_factory.mktemp("traces") / "trace-200.csv"
    small_trace(200).to_csv(path, index=False)
    return path
