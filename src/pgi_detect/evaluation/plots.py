"""PNG plots of an `EvaluationReport` and of a run's metrics over epochs (matplotlib, headless).

Figures are built with matplotlib's object API and the Agg canvas, so nothing touches pyplot's global state or needs
a display. Readable with 80 classes: the mean curve is drawn thick on top; up to 20 classes get a colour and a legend
entry each, beyond that the 5 best and 5 worst classes (by AP50) are named and the rest drawn in light grey; legends
sit outside the axes so they never cover a curve.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pgi_detect.text import class_count, counted
from pgi_detect.evaluation.confusion import ConfusionMatrix
from pgi_detect.evaluation.report import EvaluationReport

MANY_CLASSES = 20  # more classes than this: only the best and worst are named
NAMED_EACH_END = 5
MEAN_COLOUR = "#1f3fbf"
OTHER_COLOUR = "#bdbdbd"
BEST_COLOURS = ("#1b7837", "#4dac26", "#01665e", "#35978f", "#7b3294")  # greens/teals for the best classes
WORST_COLOURS = ("#b2182b", "#e66101", "#d6604d", "#8c510a", "#c51b7d")  # reds/browns for the worst
DPI = 150
CONFIDENCE_KINDS = {"f1": "F1", "precision": "Precision", "recall": "Recall"}
# Panels of the metrics-over-epochs figure: (title, metric names drawn in it).
HISTORY_PANELS = (
    ("train/loss", ("train/loss",)),
    ("train/box_loss", ("train/box_loss",)),
    ("train/cls_loss", ("train/cls_loss",)),
    ("train/dfl_loss", ("train/dfl_loss",)),
    ("val/mAP (0.50:0.95)", ("val/mAP",)),
    ("val/mAP50", ("val/mAP50",)),
    ("val/mAP75", ("val/mAP75",)),
    ("learning rate", ("train/lr", "train/lr_bias")),
)


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _class_styles(names: Sequence[str], ap50: np.ndarray) -> list[dict]:
    """Per class: colour, line width, legend label (None: unnamed grey) and z-order. Named classes are listed
    best first."""
    count = len(names)
    if count <= MANY_CLASSES:
        palette = [f"C{i % 10}" for i in range(count)] if count <= 10 else _tab20(count)
        return [{"color": palette[i], "linewidth": 1.2, "alpha": 0.9, "label": names[i], "zorder": 2, "rank": i}
                for i in range(count)]
    order = np.argsort(-ap50, kind="stable")
    best, worst = list(order[:NAMED_EACH_END]), list(order[-NAMED_EACH_END:])
    styles = [{"color": OTHER_COLOUR, "linewidth": 0.7, "alpha": 0.7, "label": None, "zorder": 1, "rank": count}
              for _ in range(count)]
    for place, index in enumerate(best + worst):
        kind = "best" if place < NAMED_EACH_END else "worst"
        colour = (BEST_COLOURS + WORST_COLOURS)[place]
        styles[index] = {"color": colour, "linewidth": 1.3, "alpha": 0.95, "zorder": 3, "rank": place,
                         "label": f"{names[index]} ({kind} AP50 {ap50[index]:.3f})"}
    return styles


def _tab20(count: int) -> list:
    return [colormaps["tab20"](i) for i in range(count)]


def _legend(axes, figure: Figure, others: int) -> None:
    """Legend to the right of the axes: the mean first, then named classes, then one entry for the grey ones."""
    handles, labels = axes.get_legend_handles_labels()
    if others:
        handles.append(Line2D([], [], color=OTHER_COLOUR, linewidth=1.0))
        labels.append(f"{others} other classes")
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                borderaxespad=0.0)


def _draw_class_curves(axes, x: np.ndarray, curves: np.ndarray, styles: list[dict]) -> int:
    """One line per class, named ones in legend order; returns how many were drawn unnamed."""
    others = 0
    for index in sorted(range(len(styles)), key=lambda i: styles[i]["rank"]):
        style = styles[index]
        others += style["label"] is None
        axes.plot(x, curves[index], color=style["color"], linewidth=style["linewidth"], alpha=style["alpha"],
                  label=style["label"], zorder=style["zorder"])
    return others


def _unit_axes(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)


def plot_pr_curves(report: EvaluationReport, path: str | Path) -> Path:
    """Precision-recall at IoU 0.50 per class (COCO's interpolated curves, whose mean is AP50) and their mean."""
    figure = _figure(10, 6)
    axes = figure.add_subplot(1, 1, 1)
    styles = _class_styles(report.names, report.ap50)
    axes.plot(report.recall_thresholds, report.pr_precision.mean(axis=0) if len(report.names) else
              np.zeros_like(report.recall_thresholds), color=MEAN_COLOUR, linewidth=3.0, zorder=5,
              label=f"all classes: AP50 {report.rows[0].ap50:.3f}")
    others = _draw_class_curves(axes, report.recall_thresholds, report.pr_precision, styles)
    _unit_axes(axes, "Recall", "Precision", f"Precision-recall curves, IoU 0.50 ({report.stage}, "
               f"{class_count(len(report.names))}, {counted(report.rows[0].images, 'image')})")
    _legend(axes, figure, others)
    return _save(figure, path)


def plot_confidence_curve(report: EvaluationReport, kind: str, path: str | Path) -> Path:
    """F1, precision or recall at IoU 0.50 against the confidence threshold, per class and their mean; a dashed line
    marks the threshold where the table's P and R are read (the smoothed mean F1's peak)."""
    curves = report.confidence
    values = {"f1": curves.f1, "precision": curves.precision, "recall": curves.recall}[kind]
    name = CONFIDENCE_KINDS[kind]
    figure = _figure(10, 6)
    axes = figure.add_subplot(1, 1, 1)
    mean = values.mean(axis=0) if len(report.names) else np.zeros_like(curves.confidence)
    best = curves.best_index
    axes.plot(curves.confidence, mean, color=MEAN_COLOUR, linewidth=3.0, zorder=5,
              label=f"all classes: {name} {mean[best]:.3f} at conf {curves.best_confidence:.3f}")
    axes.axvline(curves.best_confidence, color="black", linestyle="--", linewidth=0.8, zorder=4,
                 label="max mean F1 (table's P and R)")
    others = _draw_class_curves(axes, curves.confidence, values, _class_styles(report.names, report.ap50))
    _unit_axes(axes, "Confidence threshold", name, f"{name}-confidence curves, IoU 0.50 ({report.stage})")
    _legend(axes, figure, others)
    return _save(figure, path)


def plot_confusion_matrix(matrix: ConfusionMatrix, names: Sequence[str], path: str | Path, stage: str = "") -> Path:
    """The column-normalised matrix as a heat map (empty cells blank); values printed up to 30 classes."""
    labels = [*names, "background"]
    size = len(labels)
    side = min(max(6.0, 0.19 * size + 3.0), 22.0)
    figure = _figure(side + 1.5, side)
    axes = figure.add_subplot(1, 1, 1)
    normalised = matrix.normalised()
    shown = np.ma.masked_where(~(normalised > 0), normalised)
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02, label="fraction of the true-class column")
    cell_points = side * 72 * 0.8 / size  # the axes take about 80 % of the figure side
    font = min(9.0, max(4.0, 0.55 * cell_points))
    axes.set_xticks(np.arange(-0.5, size, 1.0), minor=True)
    axes.set_yticks(np.arange(-0.5, size, 1.0), minor=True)
    axes.grid(which="minor", color="#ececec", linewidth=0.4)
    axes.tick_params(which="minor", length=0)
    axes.set_xticks(range(size))
    axes.set_yticks(range(size))
    axes.set_xticklabels(labels, rotation=90, fontsize=font)
    axes.set_yticklabels(labels, fontsize=font)
    axes.set_xlabel("True class")
    axes.set_ylabel("Predicted class")
    axes.axhline(size - 1.5, color="grey", linewidth=0.6)
    axes.axvline(size - 1.5, color="grey", linewidth=0.6)
    if size <= 31:
        for row, column in zip(*np.nonzero(normalised > 0.005)):
            value = normalised[row, column]
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if value > 0.6 else "black")
    axes.set_title(f"Confusion matrix{f' ({stage})' if stage else ''}: columns normalised; conf >= "
                   f"{matrix.conf_threshold:g}, IoU >= {matrix.iou_threshold:g}", fontsize=11)
    return _save(figure, path)


def save_report_plots(report: EvaluationReport, folder: str | Path) -> dict[str, Path]:
    """All plots of a report into `folder`: pr_curve.png, f1_curve.png, p_curve.png, r_curve.png,
    confusion_matrix.png. Returns {name: path}."""
    folder = Path(folder)
    written = {"pr_curve": plot_pr_curves(report, folder / "pr_curve.png")}
    for kind, stem in (("f1", "f1_curve"), ("precision", "p_curve"), ("recall", "r_curve")):
        written[stem] = plot_confidence_curve(report, kind, folder / f"{stem}.png")
    written["confusion_matrix"] = plot_confusion_matrix(report.confusion, report.matrix_names,
                                                        folder / "confusion_matrix.png", report.stage)
    return written


def plot_history(history: Sequence[dict[str, float]], path: str | Path) -> Path | None:
    """Losses, mAP and learning rate over epochs from `[{"epoch": e, "<metric>": value, ...}, ...]`; a panel per
    metric group that has values. None when there is nothing to draw."""
    panels = [(title, [n for n in metrics if any(n in record for record in history)])
              for title, metrics in HISTORY_PANELS]
    panels = [(title, metrics) for title, metrics in panels if metrics]
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = _figure(4.0 * columns, 3.2 * rows)
    epochs_seen = [record["epoch"] for record in history]
    span = (min(epochs_seen) - 0.5, max(epochs_seen) + 0.5)  # one epoch axis for every panel
    for place, (title, metrics) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, place + 1)
        for line, metric in enumerate(metrics):
            points = sorted((record["epoch"], record[metric]) for record in history if metric in record)
            epochs, values = zip(*points)
            # a second metric in a panel is dashed, so it stays visible where the two coincide
            axes.plot(epochs, values, marker="o", markersize=3, linewidth=1.5, linestyle="-" if line == 0 else "--",
                      label=metric)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch")
        axes.set_xlim(*span)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title.startswith("val/"):
            axes.set_ylim(bottom=0.0)  # mAP read against zero
        axes.grid(True, alpha=0.3)
        if len(metrics) > 1:
            axes.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return _save(figure, path)
