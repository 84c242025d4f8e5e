"""Training step, ours vs the official YOLOv9 code, back to back in one process on the same weights and batch.

The reference's CPU timings (docs/yolov9-reference.md §7) were taken at another moment of a noisy VM; this script
runs the official implementation next to ours, interleaved, so both see the same machine. It imports the
official code from a directory you provide (a WongKinYiu/yolov9 checkout, or the `yolov9/` folder of the
`yolov9pip` sdist) and never copies it. Protocol: `bench_train_step.run_steps` (forward + loss + backward, batch 8,
320x320, 3 random boxes per image, 2 warm-up steps, median of the timed steps, an untimed SGD step after each).

Our model gets the official model's initial weights (`load_official_state_dict`), so the two step-0 losses must
agree: a check that both sides compute the same thing.

`--inference` times eval-mode inference instead (640x640, batch 1, `torch.inference_mode`, decoded output):
the official model as built and after its `fuse()` (Conv+BN folding), ours as built and stripped + fused (what
`Predictor` runs: BN folded and RepConvN merged). The largest difference between the official and our decoded
outputs is printed as the parity check. Use it with gelan models (a yolov9 model's official eval forward also runs
its auxiliary head).

    # the official code, e.g. the PyPI snapshot (or: git clone https://github.com/WongKinYiu/yolov9):
    .venv/bin/pip download yolov9pip==0.0.4 --no-deps --no-binary :all: -d /tmp/y9
    tar xzf /tmp/y9/yolov9pip-0.0.4.tar.gz -C /tmp/y9    # --official-root /tmp/y9/yolov9pip-0.0.4/yolov9
    # it needs a few extra packages; keep them out of .venv:
    python3.11 -m venv /tmp/official-venv
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \
        > /tmp/official-venv/lib/python3.11/site-packages/pgi.pth
    echo "$PWD/src" >> /tmp/official-venv/lib/python3.11/site-packages/pgi.pth
    /tmp/official-venv/bin/pip install pandas ipython matplotlib seaborn "setuptools<81" psutil thop
    OMP_WAIT_POLICY=PASSIVE /tmp/official-venv/bin/python scripts/bench_vs_official.py \
        --official-root /path/to/yolov9 --rounds 3
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from bench_inference import measure
from bench_train_step import (
    StepTimes, breakdown, layout_name, memory_format_of, memory_formats, milliseconds, pool, run_steps,
)
from pgi_detect.models import inference_copy
from pgi_detect.loss import DetectionLoss
from pgi_detect.models import build_model
from pgi_detect.weights.official import load_official_state_dict

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO.parent / "shared" / "docs" / "yolov9-reference.md"
MODULES_TAKING_C1 = {"Conv", "AConv", "ADown", "RepNCSPELAN4", "SPPELAN", "CBLinear"}  # parse_model inserts c1
OFFICIAL_HYP = {"cls_pw": 1.0, "fl_gamma": 0.0, "label_smoothing": 0.0}  # what the official losses read


def import_official(root: Path) -> dict[str, ModuleType]:
    if not (root / "models" / "yolo.py").is_file():
        raise SystemExit(f"--official-root {root}: no models/yolo.py there (expected a yolov9 checkout)")
    sys.path.insert(0, str(root))
    names = ("models.yolo", "models.common", "utils.loss_tal", "utils.loss_tal_dual")
    modules = {name: importlib.import_module(name) for name in names}
    logging.getLogger("yolov5").setLevel(logging.WARNING)  # its logger (set up on import) prints a layer table
    if not hasattr(modules["models.common"], "ELAN1"):  # older snapshots (yolov9pip 0.0.4) predate gelan-t/s
        modules["models.yolo"].ELAN1 = make_elan1(modules["models.common"].Conv)
    return modules


def make_elan1(conv: type[nn.Module]) -> type[nn.Module]:
    """ELAN1 built from the official `Conv`, written from the spec's description (§2) for snapshots without it."""

    class ELAN1(nn.Module):
        def __init__(self, c1: int, c2: int, c3: int, c4: int) -> None:
            super().__init__()
            self.cv1 = conv(c1, c3, 1, 1)
            self.cv2 = conv(c3 // 2, c4, 3, 1)
            self.cv3 = conv(c4, c4, 3, 1)
            self.cv4 = conv(c3 + 2 * c4, c2, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            parts = list(self.cv1(x).chunk(2, 1))
            parts.append(self.cv2(parts[-1]))
            parts.append(self.cv3(parts[-1]))
            return self.cv4(torch.cat(parts, 1))

    return ELAN1


def yaml_from_spec(name: str, spec_text: str, elan1_takes_c1: bool) -> dict:
    """An official model dict from the spec's appendix layer table for `name` (args there include c1)."""
    marker = f"### {name}\n"
    if marker not in spec_text:
        raise SystemExit(f"the spec has no layer table for {name!r}")
    section = spec_text.split(marker, 1)[1].split("\n### ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].isdigit():
            continue
        source, module, module_args = ast.literal_eval(cells[1]), cells[2], ast.literal_eval(cells[3])
        if module in MODULES_TAKING_C1 or (module == "ELAN1" and elan1_takes_c1):
            module_args = module_args[1:]
        elif module in ("DDetect", "DualDDetect"):
            module_args = module_args[:1]  # nc; parse_model appends the input widths
        layers.append([source, 1, module, module_args])
    return {"nc": 80, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": 3, "backbone": layers, "head": []}


def official_model_dict(name: str, root: Path, spec: Path, official: dict[str, ModuleType]) -> dict:
    yaml_path = root / "models" / "detect" / f"{name}.yaml"
    if yaml_path.is_file():
        import yaml

        return yaml.safe_load(yaml_path.read_text())
    if not spec.is_file():
        raise SystemExit(f"{yaml_path} is missing and so is the spec {spec} (pass --spec)")
    elan1_takes_c1 = "ELAN1" in inspect.getsource(official["models.yolo"].parse_model)
    return yaml_from_spec(name, spec.read_text(), elan1_takes_c1)


def build_pair(name: str, args: argparse.Namespace, official: dict[str, ModuleType], channels_last: bool):
    """(official model, official loss, our model, our loss) with identical initial weights."""
    memory_format = memory_format_of(channels_last)
    torch.manual_seed(args.seed)
    theirs = official["models.yolo"].DetectionModel(official_model_dict(name, args.official_root, args.spec,
                                                                        official)).train()
    theirs.hyp = OFFICIAL_HYP
    loss_module = official["utils.loss_tal_dual" if name.startswith("yolov9") else "utils.loss_tal"]
    their_loss = loss_module.ComputeLoss(theirs)
    ours = build_model(name, num_classes=80).train()
    load_official_state_dict(ours, theirs.state_dict(), source=f"official {name}")
    our_loss = DetectionLoss(80, strides=ours.strides, reg_max=ours.reg_max)
    return theirs.to(memory_format=memory_format), their_loss, ours.to(memory_format=memory_format), our_loss


def compare_inference(args: argparse.Namespace, official: dict[str, ModuleType]) -> None:
    """Latency of the official and our models on identical weights, in the forms each ships for inference."""
    for channels_last in memory_formats(args.memory_format):
        memory_format = memory_format_of(channels_last)
        for name in args.models:
            theirs, _, ours, _ = build_pair(name, args, official, channels_last)
            theirs.eval()
            images = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(args.seed))
            images = images.contiguous(memory_format=memory_format)
            times = {}
            with torch.inference_mode():
                difference = (theirs(images)[0] - ours.eval().predict_raw(images)).abs().max().item()
                times["official"] = measure(lambda: theirs(images), args.steps, args.warmup, lambda: None)
                times["ours"] = measure(lambda: ours.predict_raw(images), args.steps, args.warmup, lambda: None)
                # in place, hence after the unfused timing; its BN folding needs contiguous weights
                theirs.to(memory_format=torch.contiguous_format).fuse().to(memory_format=memory_format)
                fused_ours = inference_copy(ours).to(memory_format=memory_format)
                times["official fused"] = measure(lambda: theirs(images), args.steps, args.warmup, lambda: None)
                times["ours stripped+fused"] = measure(lambda: fused_ours.predict_raw(images), args.steps, args.warmup,
                                                       lambda: None)
            print(f"{name} {layout_name(channels_last)} (max |official - ours| output difference {difference:.2e}): "
                  + ", ".join(f"{label} {milliseconds(values):.0f} ms" for label, values in times.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, required=True, help="directory holding models/yolo.py")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC,
                        help="layer tables used when the official root has no models/detect/<name>.yaml")
    parser.add_argument("--models", nargs="+", default=["gelan-t", "yolov9-t", "gelan-s", "yolov9-s"])
    parser.add_argument("--memory-format", default="both", choices=["contiguous", "channels_last", "both"])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats, steps pooled")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inference", action="store_true",
                        help="time inference at 640, batch 1 (--steps runs after --warmup) instead of training")
    args = parser.parse_args()
    # the fixed protocol of bench_train_step, CPU float32
    args.device, args.batch, args.size, args.boxes, args.num_classes, args.breakdown = "cpu", 8, 320, 3, 80, True
    torch.set_num_threads(args.threads)
    official = import_official(args.official_root.resolve())
    if args.inference:
        compare_inference(args, official)
        return
    layouts = list(memory_formats(args.memory_format))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 8, 320x320, "
          f"{args.steps} timed steps x {args.rounds} rounds; official code from {args.official_root}")
    pooled: dict[tuple[str, bool, str], StepTimes] = {}
    for _ in range(args.rounds):
        for name in args.models:
            for channels_last in layouts:
                theirs, their_loss, ours, our_loss = build_pair(name, args, official, channels_last)
                for side, model, criterion in (("official", theirs, their_loss), ("ours", ours, our_loss)):
                    times = run_steps(model, model, criterion, args, "32", channels_last)
                    pool(pooled, (name, channels_last, side), times)
                    print(f"  {name:<9} {layout_name(channels_last):<13} {side:<8} "
                          f"{milliseconds(times.total):6.0f} ms", flush=True)
    print(f"\n{'model':<9} {'layout':<13} {'official ms':>11} {'fwd/loss/bwd':>14} {'ours ms':>8} "
          f"{'fwd/loss/bwd':>14} {'ours/official':>13} {'vs official contiguous':>22}  step-0 loss official / ours")
    for name in args.models:
        for channels_last in layouts:
            theirs, ours = pooled[(name, channels_last, "official")], pooled[(name, channels_last, "ours")]
            baseline = pooled.get((name, False, "official"))
            versus_default = (f"{milliseconds(ours.total) / milliseconds(baseline.total):.2f}x"
                              if baseline is not None else "-")
            print(f"{name:<9} {layout_name(channels_last):<13} "
                  f"{milliseconds(theirs.total):11.0f} {breakdown(theirs):>14} {milliseconds(ours.total):8.0f} "
                  f"{breakdown(ours):>14} {milliseconds(ours.total) / milliseconds(theirs.total):12.2f}x "
                  f"{versus_default:>22}  {theirs.first_loss:.4f} / {ours.first_loss:.4f}")


if __name__ == "__main__":
    main()
