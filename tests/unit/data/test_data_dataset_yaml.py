"""The ultralytics / official dataset YAML as a first-class input: datamodule, CLI, check-data; the images -> labels
rule; training sets without objects."""
from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from pgi_detect.cli.check_data import check_data_main
from pgi_detect.data import DataError, DetectionDataModule, load_source
from pgi_detect.cli.main import build_cli
from helpers.datasets import ultralytics_layout
from conftest import REPO_ROOT


def test_datamodule_reads_every_split_and_the_names(tmp_path):
    yaml_file = ultralytics_layout(tmp_path / "shapes")
    dm = DetectionDataModule(dataset=str(yaml_file), img_size=64, batch_size=2, num_workers=0)
    assert dm.class_names == ["red", "green", "blue"] and dm.category_ids == [0, 1, 2]
    train, val = dm.source("train"), dm.source("val")
    assert (len(train.records), len(val.records)) == (6, 3)
    assert train.num_objects == 9 and not train.problems  # 1 + 2 + 1 + 2 + 1 + 2 objects, every label matched
    assert [r.path.name for r in val.records] == ["val_0.jpg", "val_1.jpg", "val_2.jpg"]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 64, 64) and len(batch["targets"]) > 0
    assert sorted(dm.ground_truth("val").getImgIds()) == [0, 1, 2]
    with pytest.raises(ValueError, match="no test dataset configured"):
        dm.source("test")


def test_txt_image_lists_and_lists_of_folders(tmp_path):
    ultralytics_layout(tmp_path / "d", splits=(("train", 4), ("val", 2), ("extra", 2)))
    (tmp_path / "d" / "val.txt").write_text("./images/val/val_1.jpg\nimages/val/val_0.jpg\n\n")
    (tmp_path / "data.yaml").write_text("path: d\ntrain: [images/train, images/extra]\nval: val.txt\n"
                                        "names: [red, green, blue]\nnc: 3\n")
    dm = DetectionDataModule(dataset=str(tmp_path / "data.yaml"), img_size=64, num_workers=0)
    assert len(dm.source("train").records) == 6
    assert [r.path.name for r in dm.source("val").records] == ["val_0.jpg", "val_1.jpg"]  # sorted
    assert dm.source("val").num_objects == 3


def test_check_data_auto_detects_the_yaml_and_reports_each_split(tmp_path, capsys):
    yaml_file = ultralytics_layout(tmp_path / "shapes")
    assert check_data_main(["--path", str(yaml_file), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{yaml_file} [train] (yolo)" in out and f"{yaml_file} [val] (yolo)" in out
    assert "images: 6  annotations: 9" in out and "images: 3" in out and "no problems found" in out
    assert check_data_main(["--path", str(yaml_file), "--split", "val", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[val]" in out and "[train]" not in out
    os.remove(tmp_path / "shapes" / "labels" / "val" / "val_1.txt")
    (tmp_path / "shapes" / "labels" / "val" / "stray.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert check_data_main(["--path", str(yaml_file), "--split", "val", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "stray.txt" in out and "orphan_label" in out and "no label file (negative)" in out


def test_yaml_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("path: .\ntrain: images/nowhere\nnames: [a]\n")
    with pytest.raises(DataError, match=r"bad\.yaml: train: .*nowhere not found"):
        DetectionDataModule(dataset=str(bad)).setup("fit")
    assert check_data_main(["--path", str(bad), "--quiet"]) == 1  # reported, not raised
    assert "nowhere not found" in capsys.readouterr().out
    (tmp_path / "images").mkdir()
    bad.write_text("train: images\nnames: [a, b]\nnc: 3\n")
    with pytest.raises(DataError, match="nc is 3 but 'names' lists 2"):
        DetectionDataModule(dataset=str(bad))


def test_a_missing_split_fails_only_where_it_is_read(tmp_path, capsys):
    """A data.yaml whose val folder is missing: the train split still checks (and trains), val is named."""
    import shutil

    yaml_file = ultralytics_layout(tmp_path / "shapes")
    shutil.rmtree(tmp_path / "shapes" / "images" / "val")
    assert check_data_main(["--path", str(yaml_file), "--split", "train", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "unreadable_dataset" not in out
    assert check_data_main(["--path", str(yaml_file), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "val: " in out and "images/val not found" in out and "unreadable_dataset" in out
    module = DetectionDataModule(dataset=str(yaml_file))
    assert len(module.dataset("train")) > 0
    with pytest.raises(DataError, match=r"val: .*images/val not found"):
        module.setup("validate")


def test_explicit_splits_with_a_dataset_yaml_are_an_error(tmp_path):
    yaml_file = ultralytics_layout(tmp_path / "shapes")
    with pytest.raises(ValueError, match=r"data\.val, data\.val_images cannot be set with it"):
        DetectionDataModule(dataset=str(yaml_file), val="x.json", val_images="imgs")


def test_cli_with_a_shipped_config_takes_the_yaml_once_its_splits_are_nulled(tmp_path):
    yaml_file = ultralytics_layout(tmp_path / "shapes")
    config = ["--config", str(REPO_ROOT / "experiments" / "demo-synthetic.yaml"), f"--data.dataset={yaml_file}",
              "--data.img_size=64", "--data.num_workers=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
              "--trainer.logger=false"]
    with pytest.raises(ValueError, match=r"data\.train, data\.train_images, data\.val, data\.val_images cannot"):
        build_cli(config, run=False)
    nulled = [f"--data.{key}=null" for key in ("train", "train_images", "val", "val_images")]
    cli = build_cli([*config, *nulled], run=False)
    assert cli.model.class_names == ["red", "green", "blue"] and cli.model.detector.num_classes == 3
    assert len(cli.datamodule.source("train").records) == 6


def test_images_folder_given_explicitly_finds_labels_by_the_images_to_labels_rule(tmp_path, caplog):
    ultralytics_layout(tmp_path / "ds")
    (tmp_path / "ds" / "classes.yaml").write_text("names: [red, green, blue]\n")
    root = tmp_path / "ds"
    source = load_source(root, root / "images" / "train")  # --data.train ds --data.train_images ds/images/train
    assert source.num_objects == 9 and not source.problems and not source.unlabeled_images
    dm = DetectionDataModule(train=str(root), train_images=str(root / "images" / "train"), img_size=64,
                             num_workers=0)
    assert dm.source("train").num_objects == 9


def test_training_set_without_objects_is_an_error_unless_allowed(tmp_path):
    root = tmp_path / "ds"
    ultralytics_layout(root)
    (root / "classes.yaml").write_text("names: [red, green, blue]\n")
    (root / "labels").rename(root / "annotations")  # labels where the loader does not look
    with pytest.raises(DataError) as error:
        DetectionDataModule(train=str(root), img_size=64, num_workers=0).source("train")
    message = str(error.value)
    assert f"labels are expected in {root / 'labels'}" in message and "allow_empty_labels" in message
    allowed = DetectionDataModule(train=str(root), img_size=64, num_workers=0, allow_empty_labels=True)
    assert allowed.source("train").num_objects == 0 and len(allowed.source("train").records) == 9
    # every label file present but empty: background only, also an error
    (root / "annotations").rename(root / "labels")
    for label in (root / "labels").rglob("*.txt"):
        label.write_text("")
    with pytest.raises(DataError, match="none of the 9 images has an object: 9 have a label file, all empty"):
        DetectionDataModule(train=str(root), img_size=64, num_workers=0).source("train")


def test_coco_training_set_of_crowd_annotations_only_is_an_error(tmp_path):
    from helpers.datasets import rectangles_coco
    import json

    path = rectangles_coco(tmp_path, 2)
    data = json.loads(path.read_text())
    for annotation in data["annotations"]:
        annotation["iscrowd"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"ann\.json: none of the 2 usable images has an object .*4 crowd"):
        DetectionDataModule(train=str(path), train_images=str(tmp_path / "images"), img_size=64).source("train")


def test_shared_yolo_data_rearranged_into_the_ultralytics_layout(coco128_val_yolo_dir, tmp_path):
    plain = load_source(coco128_val_yolo_dir, segments=False, on_bad_sample="skip")
    root = tmp_path / "coco128"
    for kind, suffixes in (("images", (".jpg",)), ("labels", (".txt",))):
        (root / kind / "val2017").mkdir(parents=True)
        for file in (coco128_val_yolo_dir / kind).rglob("*"):
            if file.suffix in suffixes:
                os.symlink(file, root / kind / "val2017" / file.name)
    names = yaml.safe_load((coco128_val_yolo_dir / "classes.yaml").read_text())["names"]
    (tmp_path / "coco128.yaml").write_text(yaml.safe_dump({"path": "coco128", "val": "images/val2017",
                                                           "names": names}))
    dm = DetectionDataModule(dataset=str(tmp_path / "coco128.yaml"), img_size=64, num_workers=0,
                             on_bad_sample="skip")
    arranged = dm.source("val")
    assert dm.class_names == plain.class_names and len(arranged.records) == len(plain.records) == 128
    assert arranged.num_objects == plain.num_objects > 0
    np.testing.assert_allclose(arranged.records.boxes, plain.records.boxes)
