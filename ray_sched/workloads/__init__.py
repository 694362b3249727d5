"""Workload sources: converters for real logs and a synthetic generator.

Every source returns a frame that passes :func:`ray_sched.trace.validate_frame`
and shares one windowing/rescaling step (:mod:`ray_sched.workloads.window`).
"""

from ray_sched.workloads.swf import convert_swf
from ray_sched.workloads.synthetic import SCENARIOS, generate
from ray_sched.workloads.wfinstances import convert_wfinstances
from ray_sched.workloads.window import ConvertReport, offered_load

__all__ = ["SCENARIOS", "ConvertReport", "convert_swf", "convert_wfinstances", "generate",
           "offered_load"]
