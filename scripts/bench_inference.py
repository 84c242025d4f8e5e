"""Inference latency: the network forward + decode (`predict_raw`) in eval mode under `torch.inference_mode`,
unfused (as trained) vs stripped + fused (what Predictor and export run), median of N runs after warm-up. The
reference (docs/yolov9-reference.md §7) is gelan-t, 640x640, batch 1, 2 CPU threads: about 150 ms either form.

    .venv/bin/python scripts/bench_inference.py                                     # gelan-t, CPU, 640, batch 1
    .venv/bin/python scripts/bench_inference.py --models gelan-t yolov9-t --channels-last --onnx
    .venv/bin/python scripts/bench_inference.py --device cuda --models gelan-c yolov9-c --batch 1 32 \
        --precision 32 16 bf16
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pgi_detect.models import inference_copy
from pgi_detect.models import build_model

DTYPES = {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}


def measure(run, runs: int, warmup: int, sync) -> list[float]:
    times = []
    for index in range(warmup + runs):
        sync()
        start = time.perf_counter()
        run()
        sync()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def torch_latency(model: nn.Module, images: torch.Tensor, args: argparse.Namespace) -> list[float]:
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    with torch.inference_mode():
        return measure(lambda: model.predict_raw(images), args.runs, args.warmup, sync)


def onnx_latency(model: nn.Module, images: torch.Tensor, args: argparse.Namespace) -> list[float] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    from pgi_detect.inference import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", args.size, prepare=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"images": images.float().cpu().numpy()}
        return measure(lambda: session.run(None, feed), args.runs, args.warmup, lambda: None)


def report(label: str, times: list[float], batch: int) -> None:
    median = statistics.median(times) * 1000
    print(f"{label:<46} median {median:8.1f} ms   min {min(times) * 1000:8.1f} ms   {batch / median * 1000:8.1f} img/s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gelan-t"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["32"], choices=list(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="also time onnxruntime (CPU) on the fused export")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()} "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"{args.size}x{args.size}, {args.runs} runs after {args.warmup} warm-up")
    for name in args.models:
        torch.manual_seed(0)
        trained = build_model(name, num_classes=80).eval()
        forms = {"unfused": trained, "stripped+fused": inference_copy(trained)}
        for batch in args.batch:
            images = torch.rand(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
            for precision in args.precision:
                dtype = DTYPES[precision]
                if device.type == "cpu" and dtype == torch.float16:
                    print(f"{name}: float16 skipped on CPU")
                    continue
                for form, model in forms.items():
                    model = model.to(device, dtype).to(memory_format=memory_format)
                    x = images.to(device, dtype).contiguous(memory_format=memory_format)
                    report(f"{name} {form} b{batch} {precision}", torch_latency(model, x, args), batch)
                    forms[form] = model.float().cpu()
            if args.onnx:
                times = onnx_latency(forms["stripped+fused"], images, args)
                if times is not None:
                    report(f"{name} onnxruntime fused b{batch} 32", times, batch)


if __name__ == "__main__":
    main()
