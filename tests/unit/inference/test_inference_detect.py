"""`detect` as a user runs it: unreadable inputs skipped with one line each, outputs written as they go (a crash
keeps a valid predictions.json), dataset category ids from the checkpoint, progress without a terminal."""
from __future__ import annotations

from dataclasses import replace

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgi_detect.geometry import NMS_DETECT
from pgi_detect.data import DataError
from pgi_detect.inference import Predictor, iter_frames, run_prediction
from pgi_detect.cli.detect import detect
from pgi_detect.inference.inputs import UnreadableInput
from pgi_detect.inference.runner import Progress
from pgi_detect.models import build_model
from pgi_detect.weights import save_detector

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CATEGORY_IDS = [3, 7]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gelan-t detector file whose two classes are the dataset's category ids 3 and 7."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "gelan-t.pt"
    save_detector(build_model("gelan-t", num_classes=2).eval(), path, ["ball", "cup"], CATEGORY_IDS)
    return path


def folder_with_truncated_jpeg(folder: Path, count: int = 5, bad: int = 1) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"im{i}.jpg")
    data = (folder / f"im{bad}.jpg").read_bytes()
    (folder / f"im{bad}.jpg").write_bytes(data[: len(data) // 2])  # cut off: no end-of-image marker
    return folder


def detect_args(checkpoint: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--source", str(source), "--output", str(output), "--img-size", "64",
            "--conf", "1e-6", "--max-det", "3", *extra]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_truncated_jpeg_is_skipped_with_one_line(checkpoint, tmp_path, capsys, batch_size):
    source = folder_with_truncated_jpeg(tmp_path / "in")
    run = detect(detect_args(checkpoint, source, tmp_path / "out", "--batch-size", str(batch_size)))
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "skipped" in line] == [
        f"skipped {source / 'im1.jpg'}: truncated JPEG (no end-of-image marker)"]
    assert run.frames == 4 and run.skipped == [f"{source / 'im1.jpg'}: truncated JPEG (no end-of-image marker)"]
    records = json.loads(run.json_path.read_text())
    assert sorted({r["file_name"] for r in records}) == ["im0.jpg", "im2.jpg", "im3.jpg", "im4.jpg"]
    assert len(records) == 12 and sorted(p.name for p in run.images) == ["im0.jpg", "im2.jpg", "im3.jpg", "im4.jpg"]
    assert "4 images/frames, 12 detections, 1 unreadable input(s) skipped" in captured.out


def test_an_unreadable_image_raises_the_documented_unreadable_input(checkpoint, tmp_path):
    """Like an unreadable video: callers catching UnreadableInput (what iter_frames documents) see image failures."""
    source = folder_with_truncated_jpeg(tmp_path / "in", count=2, bad=1)
    with pytest.raises(UnreadableInput, match=r"im1\.jpg: truncated JPEG"):
        list(iter_frames(source))
    with pytest.raises(DataError, match=r"im1\.jpg: truncated JPEG"):  # still bad input, as ImageDecodeError was
        Predictor.from_checkpoint(checkpoint, img_size=64)(source / "im1.jpg")
    seen = []
    frames = list(iter_frames(source, on_error=lambda path, error: seen.append((path.name, type(error)))))
    assert [frame.name for frame in frames] == ["im0"] and seen == [("im1.jpg", UnreadableInput)]


def test_a_crash_keeps_everything_written_so_far(checkpoint, tmp_path, monkeypatch):
    source = folder_with_truncated_jpeg(tmp_path / "in", count=6, bad=5)
    predictor = Predictor.from_checkpoint(checkpoint, img_size=64, nms=replace(NMS_DETECT, conf_thres=1e-6, max_det=3),
                                          batch_size=2)
    real = predictor.predict_arrays
    calls = []

    def failing_second_batch(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(images)

    monkeypatch.setattr(predictor, "predict_arrays", failing_second_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        run_prediction(predictor, source, tmp_path / "out")
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())  # valid JSON, first batch in it
    assert sorted({r["file_name"] for r in records}) == ["im0.jpg", "im1.jpg"] and len(records) == 6
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["im0.jpg", "im1.jpg"]


def test_dataset_category_ids_everywhere(checkpoint, tmp_path):
    source = folder_with_truncated_jpeg(tmp_path / "in", count=2, bad=0)
    (source / "im0.jpg").unlink()
    run = detect(detect_args(checkpoint, source, tmp_path / "out"))
    records = json.loads(run.json_path.read_text())
    assert records and all(r["category_id"] == CATEGORY_IDS[r["class_index"]] for r in records)
    assert all(r["category_name"] == ["ball", "cup"][r["class_index"]] for r in records)
    predictor = Predictor.from_checkpoint(checkpoint, img_size=64, nms=replace(NMS_DETECT, conf_thres=1e-6, max_det=3))
    detections = predictor(source / "im1.jpg")
    assert detections.category_ids == CATEGORY_IDS and detections.image_id == 0
    assert detections.to_coco() == [{k: v for k, v in r.items() if k != "file_name"} for r in records]


def test_in_memory_images_are_numbered_in_the_order_given(checkpoint, tmp_path):
    """An array or tensor has no file to take an id from: ids are 0, 1, ... as given, so to_coco() works."""
    import cv2

    predictor = Predictor.from_checkpoint(checkpoint, img_size=64, nms=replace(NMS_DETECT, conf_thres=1e-6, max_det=3))
    source = folder_with_truncated_jpeg(tmp_path / "in", count=2, bad=0)
    array = cv2.cvtColor(cv2.imread(str(source / "im1.jpg")), cv2.COLOR_BGR2RGB)
    single = predictor(array)
    assert single.image_id == 0 and {r["image_id"] for r in single.to_coco()} == {0}
    batch = predictor(torch.from_numpy(np.stack([array, array])).permute(0, 3, 1, 2))
    assert [d.image_id for d in batch] == [0, 1]
    assert [r["category_id"] for r in batch[1].to_coco()] == [r["category_id"] for r in single.to_coco()]
    assert batch[1].to_coco(image_id=42)[0]["image_id"] == 42  # an explicit id still wins


def test_export_writes_category_ids_and_verifies_nms_exports(checkpoint, tmp_path, capsys, monkeypatch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from pgi_detect.cli import export

    output = tmp_path / "model.onnx"
    assert export.export_main(["--checkpoint", str(checkpoint), "--img-size", "64", "--nms", "--conf", "0.001",
                               "--verify", "--output", str(output)]) == 0
    assert "onnxruntime vs PyTorch (detections, random images): max abs difference" in capsys.readouterr().out
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(metadata["category_ids"]) == CATEGORY_IDS and json.loads(metadata["names"]) == ["ball", "cup"]
    # A verification that cannot run is an error, not a silent skip.
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    assert export.export_main(["--checkpoint", str(checkpoint), "--img-size", "64", "--verify",
                               "--output", str(output)]) == 1
    assert "--verify needs onnxruntime" in capsys.readouterr().err


def test_progress_lines_without_a_terminal(checkpoint, tmp_path, capsys):
    source = folder_with_truncated_jpeg(tmp_path / "in", count=5, bad=4)
    detect(detect_args(checkpoint, source, tmp_path / "out", "--progress-every", "2", "--batch-size", "1",
                       "--no-images"))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines[:-1]] == ["detect: 2/5 images", "detect: 4/5 images"]
    assert all(line.endswith("images/s)") for line in lines[:-1])
    assert lines[-1].startswith("4 images/frames")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_the_stream_found_to_be_a_terminal(capsys):
    """The terminal check looked at stdout while tqdm drew on stderr (a bar into a log, or none on the terminal)."""
    terminal = Terminal()
    report = Progress(total=3, stream=terminal)
    report.update(3)
    report.close()
    assert "3/3" in terminal.getvalue() and capsys.readouterr().err == ""


def write_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def test_outputs_of_same_named_inputs_do_not_collide(checkpoint, tmp_path):
    """`a/x.jpg a/b/x.jpg` and a folder with photo.tiff + photo.webp once wrote one drawing for two inputs and two
    detections with the same file_name. Outputs are named by the path below the source root, in the input's format."""
    from pgi_detect.cli.commands import main

    first, second = write_image(tmp_path / "a" / "x.jpg", 0), write_image(tmp_path / "a" / "b" / "x.jpg", 1)
    out = tmp_path / "out"
    args = detect_args(checkpoint, first, out)
    args.insert(args.index(str(first)) + 1, str(second))  # --source a/x.jpg a/b/x.jpg
    assert main(["detect", *args]) == 0
    assert sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg")) == ["b/x.jpg", "x.jpg"]
    records = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == {"x.jpg", "b/x.jpg"}

    folder = tmp_path / "formats"
    write_image(folder / "photo.tiff", 2), write_image(folder / "photo.webp", 3), write_image(folder / "deep" / "z.png", 4)
    out = tmp_path / "out2"
    assert main(["detect", *detect_args(checkpoint, folder, out)]) == 0
    drawn = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert drawn == ["deep/z.png", "photo.tiff", "photo.webp"]  # subfolders are read too (documented)
    assert Image.open(out / "images" / "photo.tiff").format == "TIFF"
    records = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == {"photo.tiff", "photo.webp", "deep/z.png"}
    assert len({r["image_id"] for r in records}) == 3


def test_a_source_that_is_not_an_image_is_one_line(checkpoint, tmp_path, capsys):
    from pgi_detect.cli.commands import main

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert main(["detect", *detect_args(checkpoint, notes, tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(notes) in err[0] and "not an image or a video" in err[0]


@pytest.mark.slow
def test_ctrl_c_during_detect_is_one_line_and_keeps_the_results(checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    source = tmp_path / "many"
    for index in range(400):
        write_image(source / f"im{index:03d}.jpg", index)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "pgi_detect.cli.commands", "detect", *detect_args(checkpoint, source, out),
         "--batch-size", "1", "--progress-every", "5"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    line = process.stdout.readline()
    assert line.startswith("detect: 5/400"), line
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr and stderr.strip().splitlines() == ["pgi-detect detect: interrupted (Ctrl-C)"]
    records = json.loads((out / "predictions.json").read_text())  # valid, with what was done before the Ctrl-C
    assert len({r["image_id"] for r in records}) >= 5
