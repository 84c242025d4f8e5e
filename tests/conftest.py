"""Shared test fixtures. Tests never touch the network and skip cleanly without ../shared."""
from __future__ import annotations

import importlib.util
import sys
import os
from types import ModuleType
from pathlib import Path

import pytest

# Busy-waiting OpenMP threads slow small convolutions badly when the 2 cores are shared; sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("PGI_SHARED_DIR", REPO_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, skipping the calling test when it is absent (a user's clone)."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared material not available: {path}")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return shared_path("golden")


@pytest.fixture
def coco128_dir() -> Path:
    return shared_path("data", "coco128")


@pytest.fixture
def coco128_val_yolo_dir() -> Path:
    return shared_path("data", "coco128-val-yolo")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a shared 2-core VM can be 100x slower.
    Use with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script_module(name: str) -> ModuleType:
    """Import scripts/<name>.py (scripts are not a package), e.g. the naive loss reference in bench_loss.py."""
    module_name = f"scripts_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses (and pickling) look their module up there
    spec.loader.exec_module(module)
    return module
