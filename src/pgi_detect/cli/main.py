"""The LightningCLI behind `pgi-detect fit|validate|test|predict`: `DetectionTask` + `DetectionDataModule` driven by
the YAML files in experiments/ (a per-model file composes with its base through jsonargparse's own `config:` key).

The console command itself (which tool runs, one-line errors; `python -m pgi_detect.cli.commands`) is
`pgi_detect.cli.commands`, which imports this module only for those four commands.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from pgi_detect.text import class_count
from pgi_detect.data import DetectionDataModule
from pgi_detect.training import DetectionTask
from pgi_detect.training.run_folder import RunFolderLock, check_new_fit
from pgi_detect.models import DetectorSpec
from pgi_detect.models.spec import as_plain_dict
from pgi_detect.settings import SettingError, option_prefix
from pgi_detect.data.augment.transforms import AugmentationConfig
from pgi_detect.geometry import NMSSettings
from pgi_detect.training.optim import GuardSettings, OptimizerSettings
from pgi_detect.training.checkpoint_io import (
    CHECKPOINT_DIR,
    AtomicCheckpointIO,
    CheckpointError,
    changed_values,
    checkpoint_hyperparameters,
    resolve_checkpoint_path,
)

# build_cli always passes the command line explicitly; Lightning's hint about it does not apply.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run")
# Lightning's own internals (its _pytree shim) and its model summary under mixed precision: nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")


class _NotForOurUsers(logging.Filter):
    """Lightning's advertisement for its cloud logger is not advice a pgi-detect user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NotForOurUsers())



class LoggedConfigCallback(SaveConfigCallback):
    """Writes the run's `config.yaml` (Lightning's behaviour) and hands the full resolved config (model, data with
    its augmentation, trainer) to every logger, so a wandb run records everything that made it."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": json.loads(config)})


class DetectionCLI(LightningCLI):
    """LightningCLI with the dataset-derived model arguments linked, checkpoint hyperparameters under the user's
    options, run-relative checkpoint folders, and named runs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The class list is only known once the datamodule has read its annotations.
        for name in ("num_classes", "class_names", "category_ids"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        # The recipe's nominal-batch rules need the per-device batch size.
        parser.link_arguments("data.batch_size", "model.batch_size")
        # The model summary's example input (FLOPs at the training image size).
        parser.link_arguments("data.img_size", "model.img_size")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then, when `ckpt_path` names a checkpoint, parse again with its saved model hyperparameters placed
        before the user's configs and options: defaults < checkpoint < config files < command line. Lightning's own
        rule (checkpoint over everything) silently ignored options such as `--model.predict_nms.conf_thres`."""
        super().parse_arguments(parser, args)
        # A logger folder given on the command line is the user's choice; any other follows the run folder.
        self._explicit_logger_dir = isinstance(args, (list, tuple)) and any(
            str(word).startswith(("--trainer.logger.init_args.save_dir", "--trainer.logger.save_dir")) for word in args)
        subcommand = self.config.get("subcommand")
        if subcommand is None or not isinstance(args, (list, tuple)):
            return
        config = self.config[subcommand]
        resolved = resolve_checkpoint_path(config.get("ckpt_path"), config["trainer"].get("default_root_dir"))
        config["ckpt_path"] = resolved
        ckpt_path = self._checkpoint_file(config)
        saved, held = checkpoint_hyperparameters(ckpt_path) if ckpt_path else ({}, None)
        if not saved:
            return
        at = list(args).index(subcommand) + 1
        super().parse_arguments(parser, [*args[:at], "--model", json.dumps(saved), *args[at:]])
        self.config[subcommand]["ckpt_path"] = resolved  # the second parse read the name from the command line again
        final = self.config[subcommand]["model"]
        if final.get("weights"):
            # The checkpoint's own weights replace any initial ones: not re-read (or downloaded) for nothing.
            rank_zero_info(f"{subcommand}: model.weights={final['weights']!r} not applied; the weights come from "
                           f"{ckpt_path}")
            final["weights"] = None
        if held is not None:
            check_architecture(ckpt_path, DetectorSpec.from_dict(held), final, subcommand)
            self._checkpoint_classes = (ckpt_path, held.get("num_classes"), subcommand)
        changes = changed_values(saved, final.as_dict())
        if changes:
            rank_zero_info(f"{subcommand}: options that differ from {ckpt_path}'s hyperparameters (yours are used): "
                           + ", ".join(f"model.{key} {old!r} -> {new!r}" for key, old, new in changes))

    def _parse_ckpt_path(self) -> None:
        """Replaced by `parse_arguments` (LightningCLI would re-apply the checkpoint over the command line)."""

    def _checkpoint_file(self, config: Any) -> Path | None:
        """The checkpoint file a resolved `ckpt_path` names (None for none, or "last" before the first one)."""
        ckpt_path = config.get("ckpt_path")
        return Path(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None

    def before_instantiate_classes(self) -> None:
        trainer = self._get(self.config, "trainer")
        if self.config.get("subcommand") == "fit" and trainer.get("max_epochs") == 0:
            raise SettingError("trainer.max_epochs 0 trains nothing: use 1 or more (or -1 for no limit)")
        self._recipe_owns_the_step(trainer, self._get(self.config, "model"))
        self._check_setting_groups()
        if str(trainer.get("precision")) in ("16-mixed", "16") and not _uses_cuda(trainer.get("accelerator")):
            # Lightning would swap it too, with a warning; one line says what runs instead.
            rank_zero_info(f"--trainer.precision {trainer.get('precision')}: fp16 autocast needs CUDA; bf16-mixed "
                           "on this accelerator")
            trainer["precision"] = "bf16-mixed"
        if trainer.get("sync_batchnorm") and not _uses_cuda(trainer.get("accelerator")):
            trainer["sync_batchnorm"] = False
            rank_zero_info("SyncBatchNorm needs CUDA: running DDP with per-process BatchNorm on this accelerator")
        if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            # `--trainer.enable_progress_bar false` switches the configured bar off instead of failing on it.
            trainer["callbacks"] = [c for c in trainer["callbacks"]
                                    if not str(c.get("class_path", "")).endswith("ProgressBar")]
        self._loggers_follow_the_run_folder(trainer, keep_save_dir=getattr(self, "_explicit_logger_dir", False))

    def _check_setting_groups(self) -> None:
        """Build each settings dataclass once from its options, so a value outside its range is an error naming the
        option (`model.eval_nms.conf_thres`); jsonargparse builds them later without saying which option it was."""
        for path, build in SETTING_GROUPS.items():
            value = self._get(self.config, path.split(".")[0]).get(path.split(".", 1)[1])
            values = value.as_dict() if hasattr(value, "as_dict") else value
            if isinstance(values, dict):
                with option_prefix(f"{path}."):
                    build(values)

    @staticmethod
    def _loggers_follow_the_run_folder(trainer: Any, keep_save_dir: bool = False) -> None:
        """`trainer.default_root_dir` is the run folder: checkpoints, reports, the logger's files and config.yaml all
        go there (a logger's own save_dir would leave them behind when only the run folder is moved, and overwrite
        another run's config.yaml), unless `--trainer.logger.init_args.save_dir` was given on the command line."""
        root = trainer.get("default_root_dir")
        name = Path(root or ".").resolve().name
        logger = trainer.get("logger")
        for spec in logger if isinstance(logger, list) else [logger]:
            init_args = spec.get("init_args") if hasattr(spec, "get") else None
            if init_args is None:
                continue
            if "name" in init_args and init_args.get("name") in (None, "lightning_logs"):
                init_args["name"] = name  # a logger switched on the command line names the run after the experiment
            if "save_dir" not in init_args or (keep_save_dir and init_args.get("save_dir") is not None):
                continue
            target = root or "."
            if init_args.get("save_dir") not in (None, ".", target):
                rank_zero_info(f"logger save_dir {init_args.get('save_dir')} -> {target} (the run folder, "
                               "trainer.default_root_dir; set --trainer.logger.init_args.save_dir to log elsewhere)")
            init_args["save_dir"] = target

    @staticmethod
    def _recipe_owns_the_step(trainer: Any, model: Any) -> None:
        """DetectionTask steps its optimizer itself (the official accumulation and clipping), so the Trainer's own
        clipping and accumulation options are taken over or refused instead of failing deep inside Lightning."""
        clip = trainer.get("gradient_clip_val")
        if clip:
            if trainer.get("gradient_clip_algorithm") not in (None, "norm"):
                raise SystemExit("pgi-detect: the recipe clips the gradient norm; --trainer.gradient_clip_algorithm "
                                 f"{trainer.get('gradient_clip_algorithm')} is not supported (use "
                                 "--model.optim.gradient_clip_norm)")
            model["optim.gradient_clip_norm"] = float(clip)
            trainer["gradient_clip_val"] = None
            rank_zero_info(f"--trainer.gradient_clip_val {clip} -> --model.optim.gradient_clip_norm {clip}")
        accumulate = trainer.get("accumulate_grad_batches")
        if accumulate not in (None, 1):
            raise SystemExit(f"pgi-detect: --trainer.accumulate_grad_batches {accumulate} is not used: batches per "
                             "optimizer step follow the recipe, round(--model.optim.nominal_batch_size / global "
                             "batch); set the nominal batch, or --model.optim.auto_accumulate false for one batch")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self._check_checkpoint_classes()
        self._pin_checkpoint_dirs()
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # the default: made atomic (a user's own is kept)
            strategy.checkpoint_io = AtomicCheckpointIO()

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Our checkpoints hold the full training state (and hyperparameters as plain Python values); Lightning logs
        # "`weights_only` was not set" on every load and save otherwise.
        parser.set_defaults(weights_only=False)
        if subcommand == "fit":
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="replace the checkpoints an earlier run left in trainer.default_root_dir (a fit "
                                     "without --ckpt_path into such a folder is refused otherwise)")
        return parser

    def _run_subcommand(self, subcommand: str) -> None:
        """A fit holds its run folder for as long as it trains (one fit per folder, see training/run_folder.py), and
        never overwrites checkpoints of an earlier run it does not resume."""
        if subcommand != "fit":
            return super()._run_subcommand(subcommand)
        config = self.config["fit"]
        overwrite = bool(config.get("overwrite"))
        folders = [Path(c.dirpath) for c in self.trainer.checkpoint_callbacks
                   if isinstance(c, ModelCheckpoint) and c.dirpath]
        if rank_zero_only.rank != 0:
            if not overwrite:  # rank 0 removes the earlier files then: the others must not race it
                check_new_fit(Path(self.trainer.default_root_dir), folders, config.get("ckpt_path"), False, False)
            return super()._run_subcommand(subcommand)
        with RunFolderLock(self.trainer.default_root_dir):
            check_new_fit(Path(self.trainer.default_root_dir), folders, config.get("ckpt_path"), overwrite, True)
            return super()._run_subcommand(subcommand)

    def _check_checkpoint_classes(self) -> None:
        """The class count comes from the data, so it is known only now: a checkpoint trained on other classes is an
        error naming the file and both class lists, before any data is loaded into the wrong head."""
        ckpt_path, held_classes, subcommand = getattr(self, "_checkpoint_classes", (None, None, None))
        model = getattr(self, "model", None)
        if ckpt_path is None or held_classes is None or model is None or model.spec.num_classes == held_classes:
            return
        names = model.class_names or []
        listed = f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
        raise CheckpointError(errno.EINVAL, f"{ckpt_path} was trained on {class_count(held_classes)}, but the data has "
                                            f"{model.spec.num_classes}{listed}; {subcommand} it on data with the "
                                            f"checkpoint's classes, or fine-tune it on this data with "
                                            f"--model.weights {ckpt_path} (the class branch starts anew)")

    def _pin_checkpoint_dirs(self) -> None:
        """Checkpoints without an explicit dirpath go to <default_root_dir>/checkpoints, so that a requeued or
        resumed run (`--ckpt_path last`) finds them even when the logger starts a new version."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.join(self.trainer.default_root_dir, CHECKPOINT_DIR)


# The settings dataclasses behind `--model.optim.*`, `--model.*_nms.*`, `--model.guard.*`, `--data.augmentation.*`.
SETTING_GROUPS: dict[str, Any] = {
    "model.optim": lambda values: OptimizerSettings(**values),
    "model.eval_nms": lambda values: NMSSettings(**values),
    "model.predict_nms": lambda values: NMSSettings(**values),
    "model.guard": lambda values: GuardSettings(**values),
    "data.augmentation": AugmentationConfig.from_any,
}


def check_architecture(ckpt_path: Path, held: DetectorSpec, model: Any, subcommand: str) -> None:
    """A config that asks for another architecture than the checkpoint holds is an error naming both, not a late
    state-dict mismatch (the class count comes from the data and is checked when the checkpoint is loaded)."""
    try:
        wanted = DetectorSpec(model.get("model"), held.num_classes, model.get("cls_width"),
                              as_plain_dict(model.get("backbone")), as_plain_dict(model.get("neck") or "gelan-s"),
                              model.get("auxiliary"), aux_widths=model.get("aux_widths"))
    except (KeyError, ValueError) as error:
        raise SystemExit(f"pgi-detect {subcommand}: {ckpt_path} holds {held.model}, but the config/command line "
                         f"asks for an invalid model ({error})") from None
    differences = held.architecture_difference(wanted)
    if differences:
        raise SystemExit(f"pgi-detect {subcommand}: {ckpt_path} holds another architecture than the config/command "
                         f"line asks for ({'; '.join(differences)}: checkpoint vs asked); use the checkpoint's "
                         "architecture")


def _uses_cuda(accelerator: Any) -> bool:
    if accelerator in (None, "auto"):
        return torch.cuda.is_available()
    return str(accelerator) in ("cuda", "gpu")


def build_cli(args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> DetectionCLI:
    """Create the LightningCLI (also used by tests with run=False to parse and instantiate a config)."""
    if args is None:
        args = sys.argv[1:]
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config.yaml
    return DetectionCLI(
        DetectionTask,
        DetectionDataModule,
        args=list(args),
        run=run,
        save_config_callback=LoggedConfigCallback,
        # The recipe's optimizer has three parameter groups and a per-batch warmup: `--optimizer` /
        # `--lr_scheduler` could not keep them, so they are not offered (model.optim configures the optimizer).
        auto_configure_optimizers=False,
        **kwargs,
    )
