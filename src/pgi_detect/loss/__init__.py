"""YOLOv9/GELAN training loss: task-aligned assignment, CIoU box loss, DFL and BCE class loss."""
from pgi_detect.loss.assigner import Assignment, TaskAlignedAssigner
from pgi_detect.loss.detection_loss import AssignmentMode, DetectionLoss, PaddedTargets, pad_targets
from pgi_detect.loss.result import LossResult, as_loss_result

__all__ = [
    "Assignment",
    "AssignmentMode",
    "DetectionLoss",
    "LossResult",
    "PaddedTargets",
    "TaskAlignedAssigner",
    "as_loss_result",
    "pad_targets",
]
