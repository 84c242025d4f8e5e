"""The `pgi-detect` console command: which tool runs, and how its errors reach the user.

fit / validate / test / predict go to the LightningCLI in `pgi_detect.cli.main`; check-data, export and detect are plain
argparse tools in their own modules. Nothing heavy is imported here, so `pgi-detect --help`, `detect` and `export`
do not pay for Lightning (about 2 s) before they start.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_ENV = "PGI_DETECT_DEBUG"
EXTRA_COMMANDS = {
    "check-data": ("pgi_detect.cli.check_data", "check_data_main", "validate a dataset before training"),
    "export": ("pgi_detect.cli.export", "export_main", "export a checkpoint to ONNX"),
    "detect": ("pgi_detect.cli.detect", "detect_main", "run a checkpoint on images, folders or videos"),
}
LIGHTNING_COMMANDS = {
    "fit": "train (--config experiments/<model>-coco.yaml; --ckpt_path last resumes)",
    "validate": "COCO mAP of a checkpoint on the val split",
    "test": "COCO mAP of a checkpoint on the test split",
    "predict": "write a checkpoint's detections on the predict split",
}
# What a user's own input can get wrong, reported in one line without a traceback. Classes of modules that were never
# imported cannot have been raised, so they are looked up only in sys.modules (no import just to check).
USER_ERRORS = (
    ("pgi_detect.settings", "SettingError"),
    ("pgi_detect.data.problems", "DataError"),
    ("pgi_detect.weights.state_fit", "WeightsError"),
    ("pgi_detect.training.checkpoint_io", "CheckpointError"),
    ("pgi_detect.training.run_folder", "RunFolderBusy"),
    ("wandb.errors", "UsageError"),
    # Lightning's own check of the trainer options (e.g. --trainer.devices 0 on CPU)
    ("lightning.fabric.utilities.exceptions", "MisconfigurationException"),  # e.g. "No API key configured" for the shipped configs' wandb logger
)
HINTS = {
    "UsageError": " (wandb logger: or set WANDB_MODE=offline to log locally, or pick another logger, e.g. "
                  "--trainer.logger lightning.pytorch.loggers.CSVLogger)",
}
INTERRUPTED_STATUS = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)
USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def overview() -> str:
    lines = ["usage: pgi-detect COMMAND [options]   (pgi-detect COMMAND --help for its options)", "",
             "Lightning commands (YAML configs in experiments/):"]
    lines += [f"  {name:<11} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Tools:"] + [f"  {name:<11} {text}" for name, (_, _, text) in EXTRA_COMMANDS.items()]
    lines += ["", "Errors in your input are one line; --debug (or PGI_DETECT_DEBUG=1) shows the traceback."]
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> Any:
    """Run one command; returns the LightningCLI (fit/validate/test/predict) or the tool's exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    # Modules named in a config's class_path (a user's own backbone file) are found from the working directory, as
    # with `python -m` and other CLIs.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not words or words[0] in ("-h", "--help"):
        print(overview())
        return 0 if words else 2
    if words[0] in EXTRA_COMMANDS:
        module_name, function_name, _ = EXTRA_COMMANDS[words[0]]
        return load_command(module_name, function_name)(words[1:])
    from pgi_detect.cli.main import build_cli  # Lightning (~2 s) only for the four Lightning commands

    return build_cli(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (`pgi-detect`): an exit status, 0 on success (a preempted run that saved its state and
    was requeued is a success too). Errors in what the user gave (config, data, files, weights names) are one
    `pgi-detect <command>: <message>` line and status 1; `--debug` or PGI_DETECT_DEBUG=1 shows the traceback."""
    words = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in words or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    words = [word for word in words if word != "--debug"]
    command = next((word for word in words if not word.startswith("-")), "")
    try:
        result = run(words)
    except KeyboardInterrupt:
        if debug:
            raise
        # Outputs are written as they are produced (detect, predict); fit saves on Ctrl-C through Preemption.
        print(f"\npgi-detect {command}: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
    except Exception as error:
        stop = _preemption_kind(error)
        if stop is not None:
            if _is_rank_zero():  # every rank stops with the same message: print it once
                print(f"pgi-detect {command}: {error}", file=sys.stderr if stop else sys.stdout, flush=True)
            return INTERRUPTED_STATUS if stop else 0
        if debug or not is_user_error(error):
            raise
        print(f"pgi-detect {command}: {user_message(error)}".replace("  ", " "), file=sys.stderr, flush=True)
        return 1
    return result if isinstance(result, int) else 0


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, USER_OS_ERRORS):
        return True
    for module_name, class_name in USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name)):
            return True
    return False


def _preemption_kind(error: BaseException) -> bool | None:
    """None: not a stop that saved its state; False: preempted (status 0); True: Ctrl-C (status 130)."""
    module = sys.modules.get("pgi_detect.training.preemption")
    if module is None or not isinstance(error, module.Preempted):
        return None
    return isinstance(error, module.Interrupted)


def _is_rank_zero() -> bool:
    rank_zero = sys.modules.get("lightning.pytorch.utilities.rank_zero")
    return rank_zero is None or getattr(rank_zero.rank_zero_only, "rank", 0) == 0


def user_message(error: BaseException) -> str:
    """The error's own message (an OSError's with its file), one line, plus `(--debug shows the traceback)`."""
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error.strerror or ""):
        text = f"{error.filename}: {error.strerror or error}"
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error)
    return f"{text.rstrip()}{HINTS.get(type(error).__name__, '')} (--debug shows the traceback)"


def load_command(module_name: str, function_name: str) -> Callable[[Sequence[str]], Any]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"pgi-detect: {module_name} is not available in this installation ({error})") from error
    function = getattr(module, function_name, None)
    if function is None:
        raise SystemExit(f"pgi-detect: {module_name} has no {function_name}(); this command is not implemented yet")
    return function


if __name__ == "__main__":
    sys.exit(main())
