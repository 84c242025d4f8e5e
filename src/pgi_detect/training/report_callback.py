"""`EvaluationReports`: what a person reads after validation or test — the per-class table (printed, CSV, wandb
table), the PR / F1 / P / R curves and the confusion matrix (PNG, wandb images), and during `fit` the losses, mAP and
learning rate over epochs. Files go to `report_dir(trainer)`; docs/evaluation.md lists every file a run writes.

The computations live in `pgi_detect.evaluation` (report.py, plots.py); this callback only feeds them the
`CocoEvaluation` that `DetectionTask` keeps (on global rank 0, where everything here runs) and the datamodule's
ground truth, so nothing is gathered a second time under DDP.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from pgi_detect.evaluation import CocoEvaluation
from pgi_detect.evaluation.class_metrics import ClassResult, format_table
from pgi_detect.evaluation.confusion import CONF_THRESHOLD, IOU_THRESHOLD
from pgi_detect.evaluation.plots import plot_history, save_report_plots
from pgi_detect.evaluation.report import EvaluationReport, build_report, write_class_table_csv, write_confusion_csv
from pgi_detect.training.callbacks import _wandb_loggers
from pgi_detect.training.contracts import DetectionDataSource, EvalStage


def report_dir(trainer: pl.Trainer) -> Path:
    """`<trainer.default_root_dir>/reports/<fit|validate|test>`: next to checkpoints/ and predictions/, the same
    folder whichever logger is used and however often a run is resumed."""
    return Path(trainer.default_root_dir) / "reports" / trainer.state.fn.value


class EvaluationReports(Callback):
    """Per-class table, curves and confusion matrix at the end of `validate` and `test`, and during `fit` every
    `every_n_epochs` epochs (0: only after the last validation) plus the metrics-over-epochs plot.

    Args:
        every_n_epochs: during fit, write the reports of the validation that ends epoch n, 2n, ... (files are
            overwritten; wandb keeps each); the last validation of a fit is always reported and its table printed.
        print_table: print the per-class table (validate/test, and once at the end of fit).
        confusion_conf, confusion_iou: detections scoring at least `confusion_conf` enter the confusion matrix,
            matched to ground truth at IoU >= `confusion_iou` (the official val.py's 0.25 / 0.45).
    """

    def __init__(self, every_n_epochs: int = 10, print_table: bool = True,
                 confusion_conf: float = CONF_THRESHOLD, confusion_iou: float = IOU_THRESHOLD) -> None:
        self.every_n_epochs = every_n_epochs
        self.print_table = print_table
        self.confusion_conf = confusion_conf
        self.confusion_iou = confusion_iou
        self.history: list[dict[str, float]] = []  # one record per fit epoch; kept in checkpoints
        self.last_rows: list[ClassResult] | None = None
        self._unreported: CocoEvaluation | None = None  # fit's latest validation until it is reported

    # ------------------------------------------------------------------ hooks

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn.value == "fit"
        if fitting:
            self._remember(trainer, "val/")
            self._unreported = _kept_evaluation(pl_module)
            due = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            if not due:
                return
        self._report(trainer, pl_module, "val", show=not fitting)
        self._unreported = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test", show=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the epoch's validation, so the record holds both (see _remember).
        self._remember(trainer, "train/")
        if self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._write_history(trainer, log=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._unreported is not None:  # the last validation of the fit (never the sanity check's)
            self._report(trainer, pl_module, "val", show=False, evaluation=self._unreported)
            self._unreported = None
        if self.print_table and self.last_rows is not None and trainer.is_global_zero:
            rank_zero_info(format_table(self.last_rows, "last validation of the fit, per class (COCO AP; P and R "
                                                        "at IoU 0.50 and the max-mean-F1 confidence):"))
        self._write_history(trainer, log=True)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    # ------------------------------------------------------------------ metrics over epochs

    def _remember(self, trainer: pl.Trainer, prefix: str) -> None:
        """Fold this epoch's `prefix` metrics (epoch aggregates; step-only values such as the lr as last logged)
        into its history record."""
        epoch = trainer.current_epoch
        if not self.history or self.history[-1]["epoch"] != epoch:
            self.history = [record for record in self.history if record["epoch"] < epoch]  # a resumed epoch restarts
            self.history.append({"epoch": epoch})
        record = self.history[-1]
        for name, value in trainer.callback_metrics.items():
            if not name.startswith(prefix) or name.endswith("_step") or getattr(value, "numel", lambda: 1)() != 1:
                continue
            record[name.removesuffix("_epoch")] = float(value)

    def _write_history(self, trainer: pl.Trainer, log: bool) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        folder = report_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        names = sorted({name for record in self.history for name in record if name != "epoch"})
        with (folder / "results.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", *names])
            writer.writeheader()
            writer.writerows(self.history)
        path = plot_history(self.history, folder / "results.png")
        if log and path is not None:
            for logger in _wandb_loggers(trainer):
                logger.log_image(key="fit/results", images=[str(path)], step=trainer.global_step)

    # ------------------------------------------------------------------ per-class reports

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: EvalStage, show: bool,
                evaluation: CocoEvaluation | None = None) -> None:
        evaluation = evaluation if evaluation is not None else _kept_evaluation(pl_module)
        if not trainer.is_global_zero or evaluation is None:
            return
        source = trainer.datamodule
        if not isinstance(source, DetectionDataSource):
            rank_zero_warn("EvaluationReports: the datamodule is not a DetectionDataSource; no reports written")
            return
        report = build_report(evaluation, source.ground_truth(stage), stage, pl_module.class_names,
                              pl_module.category_ids, self.confusion_conf, self.confusion_iou)
        folder = report_dir(trainer)
        files = {"per_class": write_class_table_csv(report.rows, folder / "per_class.csv"),
                 "confusion_matrix_counts": write_confusion_csv(report.confusion, report.matrix_names,
                                                                folder / "confusion_matrix.csv")}
        plots = save_report_plots(report, folder)
        self._log_to_wandb(trainer, report, plots)
        self.last_rows = report.rows
        if show and self.print_table:
            rank_zero_info(format_table(report.rows, f"{stage}: per class (COCO AP; P and R at IoU 0.50 and the "
                                                     f"max-mean-F1 confidence {report.confidence.best_confidence:.3f})"
                                        ))
        rank_zero_info(f"EvaluationReports: {stage} reports in {folder} "
                       f"({', '.join(sorted(p.name for p in [*files.values(), *plots.values()]))})")

    @staticmethod
    def _log_to_wandb(trainer: pl.Trainer, report: EvaluationReport, plots: dict[str, Path]) -> None:
        for logger in _wandb_loggers(trainer):
            columns = list(report.rows[0].as_dict())
            logger.log_table(key=f"{report.stage}/per_class", columns=columns,
                             data=[list(row.as_dict().values()) for row in report.rows], step=trainer.global_step)
            for name, path in plots.items():
                logger.log_image(key=f"{report.stage}/{name}", images=[str(path)], step=trainer.global_step)


def _kept_evaluation(pl_module: pl.LightningModule) -> CocoEvaluation | None:
    """The last `CocoEvaluation` the task kept (`last_eval["evaluation"]`, global rank 0 only)."""
    record = getattr(pl_module, "last_eval", None) or {}
    evaluation = record.get("evaluation")
    return evaluation if isinstance(evaluation, CocoEvaluation) else None
