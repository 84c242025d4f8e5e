"""Training-step benchmark: forward + DetectionLoss + backward on random data, the protocol of the reference's
CPU timing table (docs/yolov9-reference.md §7): batch 8, 320x320, 3 random boxes per image, fixed seeds, 2 warm-up
steps, median of N timed steps, an SGD step after each timed step (not timed).

    .venv/bin/python scripts/bench_train_step.py                                   # CPU, 2 threads, 4 models
    .venv/bin/python scripts/bench_train_step.py --models gelan-t --memory-format both --breakdown
    .venv/bin/python scripts/bench_train_step.py --models gelan-t --profile        # where the time goes
    # eager vs torch.compile, interleaved over 3 rounds so machine noise hits both alike
    .venv/bin/python scripts/bench_train_step.py --models gelan-t --memory-format channels_last --compile both \
        --rounds 3
    # GPU: images/s and peak memory with autocast
    .venv/bin/python scripts/bench_train_step.py --device cuda --models gelan-c yolov9-c --size 640 --batch 16 \
        --precision bf16-mixed 16-mixed 32
"""
from __future__ import annotations

import argparse
import os
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from pgi_detect.loss import DetectionLoss
from pgi_detect.models import build_model

# The reference's recorded medians (§7, run 2), taken at another moment of the VM: a rough guide only. For a
# comparison that means something, run the official code next to ours with scripts/bench_vs_official.py.
REFERENCE_MS = {"gelan-t": 743, "yolov9-t": 1289, "gelan-s": 1575, "yolov9-s": 2094}
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class StepTimes:
    total: list[float]
    forward: list[float]
    loss: list[float]
    backward: list[float]
    first_loss: float
    peak_memory_mb: float | None
    first_step_s: float  # includes compilation with --compile

    def extend(self, other: "StepTimes") -> None:
        """Pool the timed steps of another round of the same configuration."""
        for field in ("total", "forward", "loss", "backward"):
            getattr(self, field).extend(getattr(other, field))
        self.first_step_s = max(self.first_step_s, other.first_step_s)


def random_batch(batch: int, size: int, boxes: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and `[image, class, cx, cy, w, h]` targets (normalised), reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    n = batch * boxes
    image_index = torch.arange(batch).repeat_interleave(boxes).float()
    classes = torch.randint(0, num_classes, (n,), generator=generator).float()
    centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=generator) * 0.35 + 0.05
    return images, torch.cat((image_index[:, None], classes[:, None], centres, sizes), 1)


def synchronize(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def time_steps(
    name: str, args: argparse.Namespace, precision: str, channels_last: bool, compiled: bool = False,
    profiler: contextlib.AbstractContextManager | None = None,
) -> StepTimes:
    """Build our model and loss, then run warm-up + timed steps (see `run_steps`)."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(name, num_classes=args.num_classes).to(device).train()
    model = model.to(memory_format=memory_format_of(channels_last))
    criterion = DetectionLoss(args.num_classes, strides=model.strides, reg_max=model.reg_max)
    forward = torch.compile(model, mode=args.compile_mode) if compiled else model  # compiles in warm-up step 0
    return run_steps(model, forward, criterion, args, precision, channels_last, profiler)


def run_steps(
    model: torch.nn.Module, forward: Callable, criterion: Callable, args: argparse.Namespace, precision: str,
    channels_last: bool, profiler: contextlib.AbstractContextManager | None = None,
) -> StepTimes:
    """Warm-up + timed steps of `criterion(forward(images), targets)` and its backward; an SGD step on `model`
    follows each step, untimed. With `profiler`, one step after warm-up runs inside it. Any model/loss pair with
    that calling convention can be timed (scripts/bench_vs_official.py times the official code with it)."""
    device = torch.device(args.device)
    sync = synchronize(device)
    memory_format = memory_format_of(channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    images_u8, targets = random_batch(args.batch, args.size, args.boxes, args.num_classes, args.seed)
    images_u8, targets = images_u8.to(device), targets.to(device)
    times = StepTimes([], [], [], [], float("nan"), None, float("nan"))
    steps = args.warmup + (1 if profiler is not None else args.steps)
    for step in range(steps):
        if device.type == "cuda" and step == args.warmup:
            torch.cuda.reset_peak_memory_stats(device)
        context = profiler if profiler is not None and step == steps - 1 else contextlib.nullcontext()
        with context:
            sync()
            start = time.perf_counter()
            images = (images_u8.float() / 255.0).contiguous(memory_format=memory_format)
            with autocast(device, precision):
                branches = forward(images)
            if args.breakdown:
                sync()
            after_forward = time.perf_counter()
            loss, _ = criterion(branches, targets)
            if args.breakdown:
                sync()
            after_loss = time.perf_counter()
            scaler.scale(loss).backward()
            sync()
            end = time.perf_counter()
        if step == 0:
            times.first_loss = float(loss.detach())
            times.first_step_s = end - start
        if step >= args.warmup:
            times.total.append(end - start)
            times.forward.append(after_forward - start)
            times.loss.append(after_loss - after_forward)
            times.backward.append(end - after_loss)
        scaler.step(optimizer)  # not timed, like the reference
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        times.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return times


@dataclass(frozen=True)
class Configuration:
    model: str
    precision: str
    channels_last: bool
    compiled: bool

    def label(self) -> str:
        layout = layout_name(self.channels_last)
        return f"{self.model:<10} {self.precision:<10} {layout:<13} {'compiled' if self.compiled else 'eager':<8}"


def profile_step(configuration: Configuration, args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    profiler = profile(activities=activities)
    c = configuration
    time_steps(c.model, args, c.precision, c.channels_last, c.compiled, profiler=profiler)
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"--- {c.label().strip()}: one training step")
    print(profiler.key_averages().table(sort_by=sort, row_limit=args.profile_rows))


def memory_formats(choice: str) -> Iterator[bool]:
    if choice in ("contiguous", "both"):
        yield False
    if choice in ("channels_last", "both"):
        yield True


def compile_choices(choice: str) -> Iterator[bool]:
    if choice in ("off", "both"):
        yield False
    if choice in ("on", "both"):
        yield True


def milliseconds(values: list[float]) -> float:
    return statistics.median(values) * 1000


def breakdown(times: StepTimes) -> str:
    """Median forward/loss/backward milliseconds, e.g. `347/20/627`."""
    return "/".join(f"{milliseconds(v):.0f}" for v in (times.forward, times.loss, times.backward))


def pool(pooled: dict, key: object, times: StepTimes) -> None:
    """Add one round's steps to `pooled[key]` (rounds of one configuration are pooled before the median)."""
    if key in pooled:
        pooled[key].extend(times)
    else:
        pooled[key] = times


def memory_format_of(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def result_line(configuration: Configuration, times: StepTimes, args: argparse.Namespace) -> str:
    median = milliseconds(times.total)
    line = f"{configuration.label()} {median:9.0f} {min(times.total) * 1000:7.0f} {args.batch / (median / 1000):7.1f}"
    if args.breakdown:
        line += f" {breakdown(times):>17}"
    if times.peak_memory_mb is not None:
        line += f" {times.peak_memory_mb:9.0f}"
    elif configuration.model in REFERENCE_MS and (args.batch, args.size) == (8, 320):
        line += f" {median / REFERENCE_MS[configuration.model]:10.2f}x"
    else:
        line += f" {'':>11}"
    return line + f" {times.first_step_s:8.1f}  {times.first_loss:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gelan-t", "yolov9-t", "gelan-s", "yolov9-s"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--boxes", type=int, default=3, help="random boxes per image")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per round (median over all rounds)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every configuration this many times, interleaved, and pool the steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--memory-format", default="contiguous", choices=["contiguous", "channels_last", "both"])
    parser.add_argument("--compile", default="off", choices=["off", "on", "both"],
                        help="torch.compile the model (compilation happens in the first warm-up step)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--breakdown", action="store_true", help="synchronise between forward/loss/backward")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per model")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()} "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), batch {args.batch}, "
          f"{args.size}x{args.size}, {args.steps} timed steps after {args.warmup} warm-up, {args.rounds} round(s)")
    configurations = [
        Configuration(name, precision, channels_last, compiled)
        for name in args.models
        for precision in args.precision
        for channels_last in memory_formats(args.memory_format)
        for compiled in compile_choices(args.compile)
    ]
    if args.profile:
        for configuration in configurations:
            profile_step(configuration, args)
        return
    header = f"{'model':<10} {'precision':<10} {'format':<13} {'mode':<8} {'median ms':>9} {'min ms':>7} {'img/s':>7}"
    header += f" {'fwd/loss/bwd ms':>17}" if args.breakdown else ""
    header += f" {'peak MiB':>9}" if args.device.startswith("cuda") else f" {'vs §7 table':>11}"
    print(header + f" {'step-0 s':>8}  step-0 loss")
    pooled: dict[Configuration, StepTimes] = {}
    for _ in range(args.rounds):
        for c in configurations:
            times = time_steps(c.model, args, c.precision, c.channels_last, c.compiled)
            pool(pooled, c, times)
            if args.rounds == 1:
                print(result_line(c, times, args), flush=True)
    if args.rounds > 1:
        for c in configurations:
            print(result_line(c, pooled[c], args), flush=True)

if __name__ == "__main__":
    main()
