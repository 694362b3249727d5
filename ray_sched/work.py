"""Synthetic work shared by every engine (ours, ray-default, dask). No Ray imports here,
so that a Dask worker can run it without loading Ray."""

from __future__ import annotations

import time
from typing import Any


def synthetic_work(runtime_s: float, *_parents: Any) -> tuple[float, float]:
    """Sleep ``runtime_s`` seconds: the replay's stand-in for a task's real work.

    Extra positional arguments (parents' results) are accepted and ignored, so that
    engines can express dependencies by passing them.

    Returns:
        (start, finish) wall-clock seconds (``time.time()``) on the worker.
    """
    start = time.time()
    time.sleep(runtime_s)
    return start, time.time()
