"""The single command-line entry point: `pgi-detect fit|validate|test|predict|check-data|export|detect`.

fit/validate/test/predict are a LightningCLI over `DetectionTask` + `DetectionDataModule` driven by the YAML files
in experiments/; check-data and export are plain argparse tools living in their own modules.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

# build_cli always passes the (expanded) command line explicitly; Lightning's hint about it does not apply.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run")

EXTRA_COMMANDS = {
    "check-data": ("pgi_detect.data", "check_data_main", "validate a dataset before training"),
    "export": ("pgi_detect.inference.export", "export_main", "export a checkpoint to ONNX"),
    "detect": ("pgi_detect.inference.cli", "detect_main", "run a checkpoint on images, folders or videos"),
}


class DetectionCLI(LightningCLI):
    """LightningCLI with the dataset-derived model arguments linked and run-relative checkpoint folders."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        # The class list is only known once the datamodule has read its annotations.
        for name in ("num_classes", "class_names", "category_ids"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        # The recipe's nominal-batch rules need the per-device batch size.
        parser.link_arguments("data.batch_size", "model.batch_size")
        # The model summary's example input (FLOPs at the training image size).
        parser.link_arguments("data.img_size", "model.img_size")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self._pin_checkpoint_dirs()

    def _pin_checkpoint_dirs(self) -> None:
        """Checkpoints without an explicit dirpath go to <default_root_dir>/checkpoints, so that a requeued or
        resumed run (`--ckpt_path last`) finds them even when the logger starts a new version."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.join(self.trainer.default_root_dir, "checkpoints")


EXTENDS = re.compile(r"^#\s*extends:\s*(\S+)\s*$")


def config_chain(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """`path` preceded by the files it extends, base first.

    A config names its base with a comment line `# extends: base/coco.yaml` (relative to the file). The CLI then
    loads `--config base --config file`, so the file only overrides what differs. (jsonargparse's own nested
    `config:` key would reset every group the child touches, hence this tiny directive.)
    """
    path = Path(path)
    if path.resolve() in _seen:
        raise ValueError(f"config include cycle: {' -> '.join(map(str, _seen + (path,)))}")
    chain: list[Path] = []
    for line in path.read_text().splitlines():
        match = EXTENDS.match(line)
        if match:
            chain += config_chain(path.parent / match.group(1), _seen + (path.resolve(),))
    return chain + [path]


def expand_config_args(args: Sequence[str]) -> list[str]:
    """Replace each `--config FILE` (or `--config=FILE`) by the `--config` chain of the files it extends."""
    expanded: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        value = None
        if word == "--config" and index + 1 < len(args):
            value, index = args[index + 1], index + 2
        elif word.startswith("--config="):
            value, index = word.split("=", 1)[1], index + 1
        else:
            expanded.append(word)
            index += 1
            continue
        if Path(value).is_file():
            for item in config_chain(value):
                expanded += ["--config", str(item)]
        else:
            expanded += ["--config", value]
    return expanded


def _load_command(module_name: str, function_name: str) -> Callable[[Sequence[str]], Any]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"pgi-detect: {module_name} is not available in this installation ({error})") from error
    function = getattr(module, function_name, None)
    if function is None:
        raise SystemExit(f"pgi-detect: {module_name} has no {function_name}(); this command is not implemented yet")
    return function


def build_cli(args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> DetectionCLI:
    """Create the LightningCLI (also used by tests with run=False to parse and instantiate a config)."""
    # Imported here: Lightning costs ~2 s to import, which check-data, export and detect do not pay.
    from pgi_detect.data import DetectionDataModule
    from pgi_detect.training import DetectionTask

    if args is None:  # read the command line ourselves so that `# extends:` chains are expanded
        args = sys.argv[1:]
    return DetectionCLI(
        DetectionTask,
        DetectionDataModule,
        args=expand_config_args(args),
        run=run,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites its config.yaml
        **kwargs,
    )


def run(argv: Sequence[str] | None = None) -> Any:
    """Run one command; returns the LightningCLI (fit/validate/test/predict) or the tool's exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in EXTRA_COMMANDS:
        module_name, function_name, _ = EXTRA_COMMANDS[words[0]]
        return _load_command(module_name, function_name)(words[1:])
    if words and words[0] in ("-h", "--help"):
        extra = "\n".join(f"  {name:<11} {help_text}" for name, (_, _, help_text) in EXTRA_COMMANDS.items())
        print(f"pgi-detect: fit | validate | test | predict (Lightning CLI, see --help of each)\n{extra}\n")
    return build_cli(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (`pgi-detect`): an exit status, 0 on success."""
    result = run(argv)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
