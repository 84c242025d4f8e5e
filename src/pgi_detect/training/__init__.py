"""Lightning glue: the DetectionTask module, the recipe's optimisation and its callbacks."""
from pgi_detect.training.callbacks import CloseMosaic, ModelEMA, PredictionWriter, ValidationImageLogger, ema_decay
from pgi_detect.training.contracts import DetectionDataSource
from pgi_detect.training.data_monitor import DataMonitor
from pgi_detect.training.recipe_loop import RecipeLoop
from pgi_detect.training.task import DetectionTask
from pgi_detect.training.report_callback import EvaluationReports, report_dir
from pgi_detect.training.optim import (
    AccumulationSchedule,
    DivergenceGuard,
    GuardSettings,
    NonFiniteLossGuard,
    OptimizerSettings,
    RecipeSchedule,
    accumulate_steps,
    build_optimizer,
    lr_factor,
    parameter_groups,
    scaled_weight_decay,
    warmup_iterations,
)
from pgi_detect.training.preemption import Preempted, Preemption
from pgi_detect.training.progress import DetectionProgressBar

__all__ = [
    "AccumulationSchedule",
    "CloseMosaic",
    "DataMonitor",
    "DetectionDataSource",
    "DetectionProgressBar",
    "DetectionTask",
    "DivergenceGuard",
    "GuardSettings",
    "EvaluationReports",
    "ModelEMA",
    "NonFiniteLossGuard",
    "OptimizerSettings",
    "Preempted",
    "RecipeLoop",
    "Preemption",
    "PredictionWriter",
    "RecipeSchedule",
    "ValidationImageLogger",
    "accumulate_steps",
    "build_optimizer",
    "ema_decay",
    "lr_factor",
    "parameter_groups",
    "report_dir",
    "scaled_weight_decay",
    "warmup_iterations",
]
