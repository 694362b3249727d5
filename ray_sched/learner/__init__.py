"""Online learning of task runtimes and priorities (plain Python, no Ray)."""

from ray_sched.learner.features import FeatureEncoder
from ray_sched.learner.learner import (
    CheckpointError,
    FallbackPredictor,
    Learner,
    Predictions,
    SnapshotSchedule,
    describe_checkpoint,
    latest_checkpoint,
)
from ray_sched.learner.models import NotFittedError, PriorityModel, RuntimeModel

__all__ = ["CheckpointError", "FallbackPredictor", "FeatureEncoder", "Learner",
           "NotFittedError", "Predictions", "PriorityModel", "RuntimeModel", "SnapshotSchedule",
           "describe_checkpoint", "latest_checkpoint"]
