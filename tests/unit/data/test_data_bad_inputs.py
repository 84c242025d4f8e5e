"""Inputs that used to crash or pass silently: each gives a clear message naming the file (check-data reports it and
never raises), or a counted skip."""
from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
from PIL import Image

from pgi_detect.cli.check_data import check_data_main
from pgi_detect.data import DataError, DetectionDataModule, decode_image, load_source
from pgi_detect.data.formats.coco_json import load_coco_json
from pgi_detect.cli.main import build_cli
from conftest import REPO_ROOT
from helpers.datasets import rectangles_coco


def write_coco(tmp_path, mutate):
    path = rectangles_coco(tmp_path, 3)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    return path


def check(path, capsys, *extra):
    code = check_data_main(["--path", str(path), "--quiet", *extra])
    return code, capsys.readouterr().out


def test_annotation_that_is_a_list(tmp_path, capsys):
    path = write_coco(tmp_path, lambda d: d["annotations"].insert(1, [10, 10, 5, 5]))
    code, out = check(path, capsys, "--images", str(tmp_path / "images"))
    assert code == 1 and "ann.json: annotations[1] is not an object: [10, 10, 5, 5]" in out
    with pytest.raises(DataError, match=r"ann\.json: annotations\[1\] is not an object"):
        DetectionDataModule(train=str(path), train_images=str(tmp_path / "images"), img_size=64).source("train")
    dm = DetectionDataModule(train=str(path), train_images=str(tmp_path / "images"), img_size=64,
                             on_bad_sample="skip")
    assert dm.source("train").num_objects == 6  # the malformed entry is dropped, nothing else


def test_coco_format_pointed_at_a_folder(tmp_path, capsys):
    rectangles_coco(tmp_path, 2)
    code, out = check(tmp_path, capsys, "--format", "coco")
    assert code == 1 and "is a folder; format coco expects the annotation .json file" in out
    with pytest.raises(DataError, match="is a folder"):
        load_source(tmp_path, format="coco")


def test_yolo_format_pointed_at_a_json_file(tmp_path, capsys):
    path = rectangles_coco(tmp_path, 2)
    code, out = check(path, capsys, "--format", "yolo")
    assert code == 1 and "is a file; format yolo expects a dataset folder" in out and "use format coco" in out
    assert "classes.yaml" not in out


def test_string_image_id_is_named_instead_of_breaking_evaluation(tmp_path, capsys):
    def stringify(data):
        data["images"][1]["id"] = "2"

    path = write_coco(tmp_path, stringify)
    with pytest.raises(DataError, match=r"ann\.json: images\[1\] \(1\.png\): image id '2' is a str; COCO image ids "
                                        "must be integers"):
        DetectionDataModule(val=str(path), val_images=str(tmp_path / "images"), img_size=64).ground_truth("val")
    code, out = check(path, capsys, "--images", str(tmp_path / "images"))
    assert code == 1 and "image id '2' is a str" in out


# Impossible data sizes (img_size, batch_size, ...) through the CLI: tests/unit/cli/test_cli_user_errors.py.


def test_negative_box_sizes_are_invalid_not_zero_area(tmp_path, capsys):
    def negative(data):
        data["annotations"][0]["bbox"] = [30, 20, -10, 5]

    path = write_coco(tmp_path, negative)
    code, out = check(path, capsys, "--images", str(tmp_path / "images"))
    assert code == 1 and "has a bbox [30, 20, -10, 5] with negative width or height" in out
    assert "zero area" not in out
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 -0.1 0.2\n")
    with pytest.raises(DataError, match=r"a\.txt:2: box .* has a negative width or height"):
        load_source(root, class_names=["x"])


def test_text_file_named_jpg_is_named_without_internal_reprs(tmp_path, capsys):
    path = rectangles_coco(tmp_path, 2)
    (tmp_path / "images" / "1.png").write_text("this is not an image\n")
    with pytest.raises(DataError) as error:
        decode_image(tmp_path / "images" / "1.png")
    assert "1.png: corrupt or not an image (unrecognised content" in str(error.value)
    code, out = check(path, capsys, "--images", str(tmp_path / "images"))
    assert code == 1 and "1.png: corrupt or not an image" in out and "BytesIO" not in out and "0x" not in out


def test_wrong_coco_images_folder_is_one_error_not_one_per_image(tmp_path, capsys):
    path = rectangles_coco(tmp_path, 3)
    wrong = tmp_path / "train2017"
    dm = DetectionDataModule(train=str(path), train_images=str(wrong), img_size=64, on_bad_sample="skip")
    with pytest.raises(DataError, match=r"train2017: images folder not found$"):
        dm.source("train")
    code, out = check(path, capsys, "--images", str(wrong))
    assert code == 1 and "PROBLEMS: 1 (1 error:unreadable_dataset)" in out and "image file not found" not in out
    with pytest.raises(DataError, match=r"missing\.json: annotation file not found"):  # the file is named first
        load_coco_json(tmp_path / "missing.json", wrong)


@pytest.mark.slow
def test_skipped_training_samples_are_totalled_over_workers_per_epoch(tmp_path, caplog):
    path = rectangles_coco(tmp_path, 8)
    (tmp_path / "images" / "5.png").write_bytes(b"\x89PNG broken")  # met while loading, in a worker
    (tmp_path / "images" / "6.png").unlink()  # left out when the annotations are read: never trained on either
    args = ["--config", str(REPO_ROOT / "experiments" / "demo-synthetic.yaml"),
            f"--data.train={path}", f"--data.train_images={tmp_path / 'images'}", "--data.val=null",
            "--data.val_images=null", "--data.img_size=64", "--data.batch_size=4", "--data.num_workers=2",
            "--data.on_bad_sample=skip", "--data.augmentation.mosaic=0", "--trainer.max_epochs=2",
            "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
            "--trainer.callbacks+=pgi_detect.training.DataMonitor", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=" + json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                                              "init_args": {"save_dir": str(tmp_path), "name": "logs"}})]
    with caplog.at_level(logging.WARNING):
        cli = build_cli(["fit", *args])
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    per_epoch = [float(r["train/skipped_samples"]) for r in rows if r.get("train/skipped_samples")]
    # Per epoch: the image left out at load (once counted 0) and the broken one, met in one of the two workers.
    assert per_epoch == [2.0, 2.0]
    assert cli.datamodule.skipped_samples == 2  # the workers' running total over the run
    assert cli.datamodule.dropped_at_load == 1
    assert int(cli.datamodule.dataset("train").bad_samples._skipped[0]) == 0  # counted by the workers, not the main process
    assert caplog.text.count("2 bad training sample(s) not trained on (1 left out when the data was read, 1 skipped") == 2


def test_check_data_header_counts_listed_and_usable_images(tmp_path, capsys):
    """The header once said `images: 14` for 16 listed files (and 0 when every image had a size mismatch) without
    saying that the others were left out."""
    path = rectangles_coco(tmp_path, 6)
    (tmp_path / "images" / "2.png").unlink()  # left out while parsing
    (tmp_path / "images" / "4.png").write_bytes(b"\x89PNG broken")  # left out when decoded
    code, out = check(path, capsys, "--images", str(tmp_path / "images"))
    assert code == 1 and "images: 4 usable of 6 listed (2 left out, see PROBLEMS)" in out, out
    data = json.loads(path.read_text())
    for image in data["images"]:
        image["width"] += 1  # every annotated size wrong
    path.write_text(json.dumps(data))
    code, out = check(path, capsys, "--images", str(tmp_path / "images"))
    assert "images: 0 usable of 6 listed (6 left out, see PROBLEMS)" in out and out.count("size_mismatch") >= 1


def test_no_decode_still_finds_an_exif_size_mismatch(tmp_path, capsys):
    """`--no-decode` reads the headers (EXIF orientation applied) instead of missing the mismatch."""
    path = rectangles_coco(tmp_path, 2)
    picture = Image.new("RGB", (96, 64), (114, 114, 114))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 64 x 96
    picture.save(tmp_path / "images" / "rotated.jpg", exif=exif)
    data = json.loads(path.read_text())
    data["images"].append({"id": 99, "file_name": "rotated.jpg", "width": 96, "height": 64})  # the raw frame
    # A box that fits the annotated (raw) frame but is clipped in neither: measured in the wrong frame, its clipping
    # warning would mislead; a box past the raw frame's edge (clipped there) is not reported either.
    data["annotations"].append({"id": 999, "image_id": 99, "category_id": 1, "bbox": [80, 10, 30, 20],
                                "iscrowd": 0, "area": 600})
    path.write_text(json.dumps(data))
    for extra in ([], ["--no-decode"]):
        code, out = check(path, capsys, "--images", str(tmp_path / "images"), *extra)
        assert code == 1 and "rotated.jpg" in out and "size_mismatch" in out, (extra, out)
        assert "differs from the annotated size 96x64" in out
        assert "clipped_box" not in out, out


def test_yolo_label_with_a_bom_and_duplicate_lines(tmp_path, capsys):
    """A UTF-8 BOM (Windows editors) once made the first line a malformed label; duplicate lines are removed and
    now counted as a warning."""
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (64, 48), (114, 114, 114)).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_bytes("\ufeff0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"
                                            .encode("utf-8"))
    (root / "classes.txt").write_text("cat\ndog\n")
    code, out = check(root, capsys, "--class-names", "cat", "dog")
    assert "malformed" not in out, out
    assert "annotations: 2" in out and "1 duplicate label line(s)" in out and "warning:duplicate_label" in out
