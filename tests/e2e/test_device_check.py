"""scripts/device_check.py: its quick CPU run goes through every section's code path (the GPU run has nobody to
catch a broken branch before it costs a GPU session), and its tables render the shapes a GPU run records."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, load_script_module
from helpers.runs import cli_env

SCRIPT = REPO_ROOT / "scripts" / "device_check.py"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def skipped(entry) -> bool:
    """An explicit skip with a reason (not an error)."""
    return isinstance(entry, dict) and isinstance(entry.get("skipped"), str) and entry["skipped"] != ""


@pytest.mark.slow
def test_quick_cpu_run_measures_every_section(tmp_path):
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--output", str(output)],
        cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    assert "[device_check" in result.stdout  # progress lines as it goes
    results = json.loads((output / "device_check.json").read_text())
    errors = [(name, results[name]["error"]) for name in ("training", "data_loader", "ddp", "inference", "validation")
              if "error" in results[name]]
    assert not errors, errors

    machine = results["machine"]
    assert machine["torch"] and machine["cpu_count"] >= 1 and machine["date"] and "--quick" in machine["command"]
    models = results["plan"]["models"]
    assert models == ["gelan-t", "yolov9-t"]

    # 1. training: 32-true for every model; bf16-mixed runs on CPU; 16-mixed is a recorded skip
    for name in models:
        runs = results["training"][name]
        assert positive(runs["32-true"]["base"]["img_s"]) and positive(runs["32-true"]["base"]["step_ms"])
        assert positive(runs["bf16-mixed"]["base"]["img_s"])
        assert skipped(runs["16-mixed"])
        assert skipped(runs["32-true"]["largest"])  # no largest-batch search on CPU

    # 2. data loader: images/s and one bound line per model
    loader = results["data_loader"]
    assert positive(loader["img_s"]) and loader["workers"] >= 1 and loader["augmentation"]["mosaic"] == 1.0
    for name in models:
        assert "bounds training" in loader["bound"][name]

    # 3. DDP: skipped on CPU, with the worker's one-process smoke run measured
    assert skipped(results["ddp"])
    assert positive(results["ddp"]["smoke_one_process"]["img_s"])

    # 4. inference: eager / fused / channels_last for every model; compile and onnxruntime measured or skipped
    for name in models:
        forms = results["inference"][name]
        for form in ("eager", "fused", "channels_last"):
            assert positive(forms[form]["latency_ms"]) and positive(forms[form]["throughput_img_s"]), (name, form)
        assert positive(forms["compile"].get("latency_ms")) or skipped(forms["compile"])
        onnx = forms["onnxruntime"]
        assert skipped(onnx) or positive(onnx["CPUExecutionProvider"]["latency_ms"]) or skipped(
            onnx["CPUExecutionProvider"])
    first = results["inference"][models[0]]
    assert positive(first["compile"]["latency_ms"]), first["compile"]  # dynamo's path, eager backend on CPU
    assert "same" not in first["compile"]
    pytest.importorskip("onnxruntime")
    assert positive(first["onnxruntime"]["CPUExecutionProvider"]["latency_ms"])

    # 5. validation: timed for the first model (yolov9-t validates as gelan-t: a recorded skip)
    validation = results["validation"]
    assert positive(validation[models[0]]["total_s"]) and validation[models[0]]["detections_per_image"] > 0
    assert skipped(validation[models[1]])

    markdown = (output / "device_check.md").read_text()
    for title in ("## Training", "## Data loader", "## DDP", "## Inference", "## Validation"):
        assert title in markdown
    assert "| model | precision | batch | img/s |" in markdown
    assert "| gelan-t | fused |" in markdown and "| gelan-t | 32-true | 2 |" in markdown
    assert "bounds training" in markdown


def gpu_shaped_results() -> dict:
    """What a 2-GPU CUDA run records, in miniature (figures invented, shapes as the script writes them)."""
    run = {"batch": 16, "img_s": 400.0, "step_ms": 40.0, "first_step_s": 6.0, "fit_s": 12.0, "timed_steps": 8,
           "peak_mib": 9000.0, "world_size": 1}
    largest = {**run, "batch": 128, "img_s": 520.0, "peak_mib": 70000.0, "stopped_by": "oom at batch 256",
               "tried": [{**run, "batch": 32}, {"batch": 256, "oom": "CUDA out of memory."}]}
    training = {name: {"32-true": {"base": run, "largest": {**largest, "stopped_by": "budget (next: batch 64)"}},
                       "16-mixed": {"base": run, "largest": largest},
                       "16-mixed+cudnn.benchmark": {"base": {**run, "img_s": 450.0, "cudnn_benchmark": True}},
                       "bf16-mixed": {"base": {"error": "RuntimeError: boom", "traceback": "..."}}}
                for name in ("gelan-c", "yolov9-c")}
    timing = {"latency_ms": 9.0, "latency_min_ms": 8.5, "throughput_img_s": 900.0, "throughput_batch": 32}
    inference = {"img_size": 640, "gelan-c": {
        "eager": timing, "fused": timing, "channels_last": timing, "fp16_channels_last": timing,
        "compile": {**timing, "backend": "inductor", "memory_format": "channels_last", "compile_s": {"1": 40.0}},
        "onnxruntime": {"CUDAExecutionProvider": {**timing, "session_s": 2.0}, "export_s": 8.0,
                        "TensorrtExecutionProvider": {"skipped": "onnxruntime lacks TensorrtExecutionProvider"}}},
        "yolov9-c": {"eager": timing, "fused": timing, "channels_last": {"error": "RuntimeError: x"},
                     "compile": {"skipped": "same network"}, "onnxruntime": {"skipped": "same network"}},
        "gelan-e": {"eager": timing, "error": "OutOfMemoryError: CUDA out of memory", "traceback": "..."}}
    return {
        "machine": {"command": "python scripts/device_check.py --output out", "date": "2026-12-02",
                    "gpu": "NVIDIA H200",
                    "gpu_memory_gib": 139.8, "gpu_count": 2, "driver": "580", "cuda_build": "13.0", "cudnn": 91000,
                    "cpu_count": 16, "torch": "2.14.1", "lightning": "2.6.6", "git_commit": "abc"},
        "total_s": 440.0,
        "training": training,
        "data_loader": {"workers": 8, "batch": 16, "img_size": 640, "img_s": 700.0, "timed_batches": 60,
                        "timed_s": 1.4, "first_batch_s": 0.8, "dataset_images": 2048, "unique_images": 256,
                        "augmentation": {"mosaic": 1.0, "mixup": 0.15, "copy_paste": 0.3},
                        "bound": {"gelan-c": "gelan-c: the model bounds training: ..."}},
        "ddp": {"gpus": 2, "precision": "16-mixed", "batch_per_gpu": 16,
                "gelan-c": {**run, "img_s": 780.0, "world_size": 2, "scaling": 1.95},
                "yolov9-c": {"skipped": "budget: 3 s left"}},
        "inference": inference,
        "validation": {"images": 5000, "unique_images": 256, "img_size": 640, "precision": "16-mixed",
                       "val_batch": 32, "workers": 8, "rect_val": True, "dataset_s": 1.0,
                       "gelan-c": {"total_s": 40.0, "img_s": 125.0, "setup_s": 2.0, "loop_s": 20.0, "scoring_s": 18.0,
                                   "detections": 1_500_000, "detections_per_image": 300.0, "mAP": 0.0},
                       "yolov9-c": {"skipped": "same network"}},
    }


def test_markdown_renders_gpu_shaped_results():
    device_check = load_script_module("device_check")
    markdown = device_check.markdown_report(gpu_shaped_results())
    assert "NVIDIA H200" in markdown
    assert "| gelan-c | 16-mixed | 16 | 400.0 | 40.0 | 9,000 | 128 | 520.0 | 70,000 | oom at batch 256 |" in markdown
    assert "| yolov9-c | bf16-mixed | | error: RuntimeError: boom |" in markdown
    assert "| gelan-c | 16-mixed+cudnn.benchmark | 16 | 450.0 |" in markdown
    assert "| gelan-c | 780.0 | 390.0 | 1.95x |" in markdown  # DDP: total, per GPU, against one GPU
    assert "| yolov9-c | skipped: budget: 3 s left |" in markdown
    assert "| gelan-c | compile | 9.00 | 900.0 | 32 | inductor, compiled in 40.0 s |" in markdown
    assert "| gelan-c | onnxruntime CUDAExecutionProvider | 9.00 |" in markdown
    assert "skipped: onnxruntime lacks TensorrtExecutionProvider" in markdown
    assert "| gelan-c | 40.0 | 125.0 | 2.0 | 20.0 | 18.0 | 300 |" in markdown
    assert "| gelan-e | | | | | error: OutOfMemoryError: CUDA out of memory |" in markdown
    # every table row has its header's number of cells
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    header_cells = None
    for line in rows:
        cells = line.count("|")
        if set(line) <= {"|", "-"}:
            continue
        if line.startswith("| model") or line.startswith("| workers"):
            header_cells = cells
        assert cells == header_cells, line


def test_plan_defaults_and_budget_shares():
    device_check = load_script_module("device_check")
    parser = device_check.build_parser()
    gpu = device_check.make_plan(parser.parse_args([]))
    assert (gpu.device, gpu.models, gpu.img_size, gpu.base_batch, gpu.search_largest) == (
        "cuda", ["gelan-c", "yolov9-c"], 640, 16, True)
    assert gpu.precisions == ["32-true", "16-mixed", "bf16-mixed"] and gpu.val_entries == 5000
    quick = device_check.make_plan(parser.parse_args(["--device", "cpu", "--quick", "--models", "gelan-s"]))
    assert (quick.models, quick.img_size, quick.base_batch, quick.search_largest) == (["gelan-s"], 64, 2, False)
    budget = device_check.Budget(450.0, gpu.reserve_s, gpu.min_section_s)
    # each section must end early enough to leave the later ones their reserve
    assert budget.deadline("validation") == 450.0
    assert budget.deadline("inference") == 450.0 - gpu.reserve_s["validation"]
    assert budget.deadline("training") < budget.deadline("data_loader") < budget.deadline("inference")
    assert budget.skip_reason("training") is None
    assert device_check.Budget(10.0, gpu.reserve_s, gpu.min_section_s).skip_reason("training").startswith("budget")
    images, targets = device_check.training_batch(40, 32)
    assert images.shape == (40, 3, 32, 32) and targets[:, 0].max() == 39 and set(targets[:, 0].long().tolist()) == set(
        range(40))
