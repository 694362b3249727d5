"""An energy estimate for a run: a linear power model, stated so that it can be argued with.

    energy_j = busy_core_s * busy_core_w + nodes * makespan_s * idle_node_w

- ``busy_core_s``: core-seconds spent running tasks (``measured_runtime_s * cpu`` over
  ok tasks), the same numerator as the summary's ``utilization``.
- ``busy_core_w``: the power a core draws *above idle* while busy. Default 2.76 W: the
  Cloud Carbon Footprint methodology's average for one AWS vCPU, 3.5 W at full load
  minus 0.74 W idle.
- ``idle_node_w``: what a node draws whether or not it works, for as long as the run
  lasts. Default 11.84 W: the same 0.74 W idle figure times 16 vCPUs, one mid-sized node.
  Memory, disks, network and cooling are left out; raise both figures for a whole-server
  model (a two-socket server idles near 100 W).

Reported as joules per ok task, so that runs of the same trace compare directly: a policy
that finishes sooner saves idle energy; one that runs the same work uses the same busy
energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ray_sched.errors import ConfigError

#: Watts one busy core draws above idle (CCF, AWS average: 3.5 W max - 0.74 W min per vCPU).
DEFAULT_BUSY_CORE_W = 2.76
#: Watts one node draws at idle (CCF's 0.74 W per vCPU x 16 vCPUs).
DEFAULT_IDLE_NODE_W = 11.84


@dataclass(frozen=True)
class EnergyModel:
    """The linear power model of the module docstring.

    Args:
        busy_core_w: watts per busy core above idle (>= 0).
        idle_node_w: watts per node, drawn for the whole makespan (>= 0).

    Raises:
        ConfigError: a negative or non-finite wattage.
    """

    busy_core_w: float = DEFAULT_BUSY_CORE_W
    idle_node_w: float = DEFAULT_IDLE_NODE_W

    def __post_init__(self):
        for name in ("busy_core_w", "idle_node_w"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0 watts, got {value!r}")

    def estimate(self, results: pd.DataFrame, *, nodes: int | None = None) -> dict:
        """Energy of one run from its per-task results (TRACE_FORMAT.md section 2).

        Args:
            results: frame of shape (n_tasks, >= 13); uses ``status``, ``arrival_s``,
                ``finish_s``, ``measured_runtime_s`` and ``cpu`` (1 when absent).
            nodes: nodes the run held; default: distinct values of ``node`` (at least 1).

        Returns:
            ``energy_j``, ``energy_busy_j``, ``energy_idle_j``, ``energy_j_per_task``
            (None when no task is ok), ``busy_core_s``, ``nodes``, ``makespan_s``.
        """
        ok = (results["status"] == "ok").to_numpy()
        finish = pd.to_numeric(results["finish_s"], errors="coerce").to_numpy(dtype=float)
        arrival = pd.to_numeric(results["arrival_s"], errors="coerce").to_numpy(dtype=float)
        finished = ~np.isnan(finish)
        makespan = float(finish[finished].max() - arrival[finished].min()) \
            if finished.any() else 0.0
        cpu = (pd.to_numeric(results["cpu"], errors="coerce").fillna(1.0).to_numpy(dtype=float)
               if "cpu" in results.columns else np.ones(len(results)))
        measured = pd.to_numeric(results["measured_runtime_s"],
                                 errors="coerce").to_numpy(dtype=float)
        busy_core_s = float(np.nansum((measured * cpu)[ok]))
        if nodes is None:
            named = results["node"].dropna().astype(str) if "node" in results.columns else []
            nodes = max(1, len({n for n in named if n}))
        busy_j = busy_core_s * self.busy_core_w
        idle_j = nodes * makespan * self.idle_node_w
        n_ok = int(ok.sum())
        return {"energy_j": busy_j + idle_j, "energy_busy_j": busy_j, "energy_idle_j": idle_j,
                "energy_j_per_task": (busy_j + idle_j) / n_ok if n_ok else None,
                "busy_core_s": busy_core_s, "nodes": int(nodes), "makespan_s": makespan}
