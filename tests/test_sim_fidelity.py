"""The simulator is faithful: on the same trace, its mean and p99 JCT for fifo and ml are
within 10% of the Ray replay's (issue 7). The benchmark checks the 1,500-task traces;
this is the small-trace test."""

from __future__ import annotations

import pytest

from ray_sched.replay import replay, simulate_trace
from ray_sched.workloads.synthetic import generate
from tests.conftest import RAY_SLOTS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: The issue's tolerance.
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def trace():
    # Runtimes of a few hundred ms, so that a loaded 2-core machine's jitter (a few ms per
    # task) stays small against them, as it does against real telemetry batches.
    return generate("mixed", n=300, slots=RAY_SLOTS, load=0.7, seed=21)


@pytest.mark.parametrize("policy", ["fifo", "ml"])
def test_simulated_jct_is_within_ten_percent_of_the_ray_replay(ray_local, trace, policy):
    real = replay(trace, policy=policy, slots=RAY_SLOTS, show_progress=False,
                  model_options={"fresh": True, "model_dir": None})
    simulated = simulate_trace(trace, policy=policy, slots=RAY_SLOTS)
    for metric in ("jct_mean_s", "jct_p99_s"):
        ratio = simulated.summary[metric] / real.summary[metric]
        assert abs(ratio - 1) <= TOLERANCE, (policy, metric, ratio, real.summary[metric])
