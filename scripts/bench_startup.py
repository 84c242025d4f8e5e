"""Start-up time of the commands users type, against `import torch` alone (median of --repeat fresh interpreters).

    .venv/bin/python scripts/bench_startup.py --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "import torch": [sys.executable, "-c", "import torch"],
    "pgi-detect --help": [sys.executable, "-m", "pgi_detect.cli.commands", "--help"],
    "pgi-detect detect --help": [sys.executable, "-m", "pgi_detect.cli.commands", "detect", "--help"],
    "pgi-detect export --help": [sys.executable, "-m", "pgi_detect.cli.commands", "export", "--help"],
    "import pgi_detect.inference": [sys.executable, "-c", "import pgi_detect.inference"],
    "pgi-detect fit --help": [sys.executable, "-m", "pgi_detect.cli.commands", "fit", "--help"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    seconds(CASES["import torch"])  # warm the file cache once
    medians = {name: statistics.median(seconds(command) for _ in range(args.repeat)) for name, command in CASES.items()}
    base = medians["import torch"]
    print(f"{'command':<30} {'median s':>9} {'x import torch':>15}")
    for name, value in medians.items():
        print(f"{name:<30} {value:9.2f} {value / base:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
