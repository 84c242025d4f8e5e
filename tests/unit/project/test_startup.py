"""Start-up stays light: what `pgi-detect --help`, the tools and `import pgi_detect.inference` load (module lists, not
timings; scripts/bench_startup.py measures the seconds)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("albumentations", "torchmetrics", "scipy", "lightning", "matplotlib", "timm", "torchvision")


def loaded_after(code: str) -> set[str]:
    """Top-level packages imported by running `code` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_overview_help_imports_no_torch():
    loaded = loaded_after("from pgi_detect.cli.commands import main\nassert main(['--help']) == 0")
    assert "torch" not in loaded and not loaded & set(HEAVY)


@pytest.mark.parametrize("command", ["detect", "export", "check-data"])
def test_tool_help_imports_no_lightning_or_training_stack(command):
    loaded = loaded_after(f"from pgi_detect.cli.commands import main\ntry:\n    main([{command!r}, '--help'])\n"
                          "except SystemExit:\n    pass")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_inference_import_leaves_out_training_and_evaluation_dependencies():
    loaded = loaded_after("import pgi_detect.inference\nfrom pgi_detect.inference import Predictor, Detections")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_lazy_package_names_still_resolve():
    """The lazy namespaces give every public name they list (and the training path still gets them all)."""
    loaded = loaded_after("import pgi_detect.data as d, pgi_detect.evaluation as e\n"
                          "missing = [n for m in (d, e) for n in m.__all__ if getattr(m, n, None) is None]\n"
                          "assert not missing, missing\nassert 'DetectionDataModule' in dir(d)")
    assert {"lightning", "albumentations", "torchmetrics"} <= loaded
