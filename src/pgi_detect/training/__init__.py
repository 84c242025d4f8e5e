"""Lightning glue: the DetectionTask module, the recipe's optimizer/schedule and its callbacks."""
from pgi_detect.training.callbacks import (
    CloseMosaic,
    ModelEMA,
    NonFiniteLossGuard,
    PredictionWriter,
    ValidationImageLogger,
    ema_decay,
)
from pgi_detect.training.optim import (
    RecipeSchedule,
    accumulate_steps,
    build_optimizer,
    lr_factor,
    parameter_groups,
    scaled_weight_decay,
    warmup_iterations,
)



def __getattr__(name: str):
    # DetectionTask pulls in the model zoo and loss; import it only when asked for.
    if name == "DetectionTask":
        from pgi_detect.training.lightning_module import DetectionTask

        return DetectionTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CloseMosaic",
    "DetectionTask",
    "ModelEMA",
    "NonFiniteLossGuard",
    "PredictionWriter",
    "RecipeSchedule",
    "ValidationImageLogger",
    "accumulate_steps",
    "build_optimizer",
    "ema_decay",
    "lr_factor",
    "parameter_groups",
    "scaled_weight_decay",
    "warmup_iterations",
]
