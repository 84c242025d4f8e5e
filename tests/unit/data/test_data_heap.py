"""The dataset bounds glibc's heap retention in the process that runs it (data/heap.py): a freed image-sized block
is reused instead of being handed back and faulted in again, which is what kept a worker's memory flat without
the per-sample cost of trimming."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from helpers.datasets import rectangles_coco

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap behaviour")

# In a fresh process: optionally draw one training sample, then fault counts of allocating (and writing) a 20 MB
# block, freeing it and allocating it again.
PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from pgi_detect.data import DetectionDataset, load_source

    if sys.argv[1] == "sample":
        dataset = DetectionDataset(load_source(sys.argv[2], sys.argv[3]), 64, train=True)
        dataset[0]

    def faults_of_a_block():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(20 * 2**20, np.uint8)
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    print(faults_of_a_block(), faults_of_a_block())
""")


def faults_of_two_blocks(mode: str, root) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(root / "ann.json"), str(root / "images")],
                         capture_output=True, text=True, timeout=300, check=True)
    first, second = out.stdout.strip().splitlines()[-1].split()
    return int(first), int(second)


def test_a_freed_block_is_reused_once_the_dataset_ran(tmp_path):
    rectangles_coco(tmp_path, num_images=4)
    first, second = faults_of_two_blocks("sample", tmp_path)
    assert first > 0 and second < first / 4
    # glibc's defaults in the same process without a sample: the second block is faulted in again (the first came
    # from mmap, the second from a freshly grown heap), which is what the bound avoids
    first, second = faults_of_two_blocks("none", tmp_path)
    assert first > 0 and second > first / 2
