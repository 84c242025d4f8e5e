"""scripts/bench_vs_official.py builds official model dicts from the spec's layer tables (for official snapshots
without yaml files). The official code is not available here, so check those dicts against our own tables: same
rows, same inputs, same block args (our tables list args after the input channels, as the official yaml does)."""
from __future__ import annotations

import sys

import pytest

from conftest import REPO_ROOT, load_script_module, shared_path
from pgi_detect.models import ZOO_MODELS, DetectorSpec, architecture_of

OFFICIAL_NAME = {"Upsample": "nn.Upsample", "DetectHead": "DDetect", "DualDetectHead": "DualDDetect"}


def as_tuples(value):
    """Nested lists (yaml) and nested tuples (our tables) compare equal after this."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@pytest.fixture(scope="module")
def bench_module():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))  # it imports bench_train_step as a sibling
    try:
        yield load_script_module("bench_vs_official")
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_spec_tables_give_the_official_yaml_of_our_tables(bench_module, name):
    spec_text = shared_path("docs", "yolov9-reference.md").read_text()
    model_dict = bench_module.yaml_from_spec(name, spec_text, elan1_takes_c1=True)
    rows = model_dict["backbone"] + model_dict["head"]
    table = architecture_of(DetectorSpec(name)).table
    assert len(rows) == len(table)
    for index, ((source, repeats, module, args), layer) in enumerate(zip(rows, table)):
        block = layer.block.__name__
        assert module == OFFICIAL_NAME.get(block, block), f"{name} row {index}"
        assert as_tuples(source) == layer.source, f"{name} row {index}"
        assert repeats == 1
        if module in bench_module.MODULES_TAKING_C1 | {"ELAN1", "CBFuse"}:
            assert as_tuples(args) == as_tuples(layer.args), f"{name} row {index}"
        if module in ("DDetect", "DualDDetect"):
            assert args == [80]


def test_elan1_keeps_its_input_width_for_snapshots_whose_parser_lacks_it(bench_module):
    spec_text = shared_path("docs", "yolov9-reference.md").read_text()
    rows = bench_module.yaml_from_spec("gelan-t", spec_text, elan1_takes_c1=False)["backbone"]
    assert rows[2][2:] == ["ELAN1", [32, 32, 32, 16]]  # full (c1, c2, c3, c4): parse_model passes them through


def test_unknown_model_is_named(bench_module):
    with pytest.raises(SystemExit, match="gelan-x"):
        bench_module.yaml_from_spec("gelan-x", "### gelan-t\n| 0 | -1 | Conv | [3, 16, 3, 2] | 464 | x |\n", True)
