"""Run a command on baseline CPU kernels: no AVX/AVX2/AVX-512 paths in torch, oneDNN, MKL, numpy or OpenCV.

Recorded-number tests (`pytest -m numeric`) must pass on every CPU a user has, not only the one that recorded
them. This machine's own kernels are one profile; this script gives a second one, the kernels an old or
minimal x86 CPU runs, so `make test-cpu-baseline` checks the tolerances against both ends.

    .venv/bin/python scripts/cpu_baseline.py -- .venv/bin/python -m pytest -q -m numeric tests
    .venv/bin/python scripts/cpu_baseline.py --print     # the environment, for a shell

The libraries' switch names depend on what each wheel dispatches on this machine, so they are read from the
libraries here, and the child process is checked to really run on the baseline before the command starts.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

# OpenCV names every optional x86 feature it may dispatch to; disabling one it does not know only logs a line.
OPENCV_OPTIONAL = ["SSSE3", "SSE4.1", "POPCNT", "SSE4.2", "AVX", "FP16", "AVX2", "FMA3", "AVX512F",
                   "AVX512-COMMON", "AVX512-SKX"]

CHECK = """
import torch, cv2
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
capability = torch.backends.cpu.get_cpu_capability()
numpy_active = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
# OpenCV marks dispatched features with '*' and the disabled ones among them with a trailing '?'
opencv_active = [w[1:] for w in cv2.getCPUFeaturesLine().split() if w.startswith('*') and not w.endswith('?')]
print(f"baseline CPU profile: torch {capability}, numpy dispatch {numpy_active or 'none'}, "
      f"OpenCV dispatch {opencv_active or 'none'}")
if capability != 'DEFAULT' or numpy_active or opencv_active:
    raise SystemExit('the baseline profile did not take effect')
"""


def baseline_environment() -> dict[str, str]:
    """Variables that make each library pick its plain SSE kernels."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    import cv2

    dispatched = [word[1:] for word in cv2.getCPUFeaturesLine().split() if word.startswith("*")]
    opencv = list(dict.fromkeys(OPENCV_OPTIONAL + dispatched))
    return {
        "ATEN_CPU_CAPABILITY": "default",  # torch's own vectorised kernels
        "ONEDNN_MAX_CPU_ISA": "SSE41",  # convolutions
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",  # matrix products
        "NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__),
        "OPENCV_CPU_DISABLE": ",".join(opencv),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the variables as shell assignments")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to run after --")
    args = parser.parse_args(argv)
    env = baseline_environment()
    if args.print:
        for key, value in env.items():
            print(f"export {key}='{value}'")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    child_env = {**os.environ, **env}
    subprocess.run([sys.executable, "-c", CHECK], env=child_env, check=True)
    return subprocess.run(command, env=child_env).returncode


if __name__ == "__main__":
    sys.exit(main())
