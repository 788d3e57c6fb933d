"""`reelmill train`: Lightning's CLI over the video DiT module and the shard data module.

    reelmill train fit --config configs/train/dit-tiny-cpu.yaml --data.shards 'OUT/shards/*.tar'
    reelmill train fit --config dit-tiny-cpu --data.shards ... --ckpt_path last

`--config` takes a recipe name (`dit-tiny-cpu`, `dit-b-gpu`: the YAML files under configs/train/) as
curate takes a preset, or a file. Everything LightningCLI offers works (`--print_config`, `--trainer.*`,
`--model.*`, `--data.*`, several `--config` files). On top of it, a run lives in one directory,
`trainer.default_root_dir`: unless the recipe names loggers, TensorBoard and CSV logs go to
`tensorboard/` and `csv/` there, and every ModelCheckpoint without a `dirpath` writes to `checkpoints/`
there, so `--ckpt_path last` finds the last checkpoint of the run when the same command is started again
after a crash. When training ends, the final state is saved to `checkpoints/last.ckpt` as well. The run
says which kind of weights its encoders are (`reelmill train: models: random-weights` for the tiny
stand-ins) and every checkpoint keeps it as `models`.

Resuming reads the checkpoint with `weights_only=True` whatever Lightning's default or the environment
(`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`) says: a checkpoint is a pickle, and one holding anything but tensors
and plain values is refused (exit status 2) before any of it runs. `--weights_only false` is refused too.
A data stream with nothing usable (`training.data.NothingUsable`) is an error line and exit status 2.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import tempfile
import warnings
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from curation.config import ConfigError, resolve_preset
from curation.inputs import InputError
from jobs.logs import configure_logging
from jobs.run_info import encoder_models_label
from jobs.sample import refused
from training.data import NothingUsable, ShardDataModule
from training.encoders import EncoderError
from training.module import VideoDiTModule


class TrainCLI(LightningCLI):
    def __init__(self, *args, trainer_overrides: dict | None = None, **kwargs):
        """`trainer_overrides`: Trainer arguments that win over the recipe and the flags (objects, such as
        the strategy and environment a Ray Train worker must use)."""
        self.trainer_overrides = dict(trainer_overrides or {})
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's own, less its warning about `args` given while `sys.argv` is not empty: our
        `args` are the command line (`reelmill train ...`, or a Ray Train worker's config), on purpose."""
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs):
        kwargs = {**self.trainer_overrides, **kwargs}
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = trainer_config.get("default_root_dir") or os.getcwd()
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = [TensorBoardLogger(root, name="tensorboard"), CSVLogger(root, name="csv")]
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(ModelsLabel.of(self.model))
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(root, "checkpoints")
        return trainer

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the hyperparameters of a `--ckpt_path FILE` (weights_only=True) before
        anything else: a refused one is our clear error, not a traceback."""
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as exc:
            raise refused(str(self.config[self.config.subcommand].get("ckpt_path")), exc) from None

    # LightningCLI runs a subcommand through the method of its name when there is one: each loads its
    # `--ckpt_path` with weights_only=True
    def fit(self, model: LightningModule, weights_only: bool | None = None, **kwargs) -> None:
        safe_run(self.trainer, "fit", model, weights_only, **kwargs)

    def validate(self, model: LightningModule, weights_only: bool | None = None, **kwargs) -> Any:
        return safe_run(self.trainer, "validate", model, weights_only, **kwargs)

    def test(self, model: LightningModule, weights_only: bool | None = None, **kwargs) -> Any:
        return safe_run(self.trainer, "test", model, weights_only, **kwargs)

    def predict(self, model: LightningModule, weights_only: bool | None = None, **kwargs) -> Any:
        return safe_run(self.trainer, "predict", model, weights_only, **kwargs)

    def after_fit(self) -> None:
        checkpoints = self.trainer.checkpoint_callback
        if checkpoints is None or not checkpoints.dirpath:
            return
        last = os.path.join(checkpoints.dirpath, "last.ckpt")
        self.trainer.save_checkpoint(last, weights_only=False)  # explicit: Lightning logs a line otherwise
        self.trainer.print(f"reelmill train: step {self.trainer.global_step}, final checkpoint {last}")


class ModelsLabel(Callback):
    """Says which kind of weights the module's encoders are (`curation.model_labels`: pretrained,
    random-weights, none) when training starts, and keeps it in every checkpoint as `models`, so a model
    trained on tiny random-weight stand-ins stays marked wherever its checkpoints go (`reelmill sample`
    reads it, even when its encoders are then loaded from elsewhere)."""

    CHECKPOINT_KEY = "models"

    def __init__(self, label: str):
        self.label = label

    @classmethod
    def of(cls, module: LightningModule) -> ModelsLabel:
        vae, text = getattr(module, "vae_config", None), getattr(module, "text_config", None)
        return cls(encoder_models_label(vae, text))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.print(f"reelmill train: models: {self.label}")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        checkpoint[self.CHECKPOINT_KEY] = self.label


def safe_run(
    trainer: Trainer,
    method: str,
    model: LightningModule,
    weights_only: bool | None = None,
    ckpt_path: str | None = None,
    **kwargs,
) -> Any:
    """`trainer.fit` (or validate, test, predict) loading `ckpt_path` (a file, "last", ...) with
    weights_only=True, whatever Lightning's default or the environment; a refused checkpoint becomes
    CheckpointRefused (a ConfigError). `weights_only=False` is refused rather than quietly ignored."""
    if weights_only is False:
        raise ConfigError(
            "--weights_only false: reelmill train loads checkpoints only as plain weights "
            "(weights_only=True), which is all it writes"
        )
    try:
        with warnings.catch_warnings():
            if ckpt_path:  # a run resumed into its own directory: of course that holds its checkpoints
                warnings.filterwarnings(
                    "ignore",
                    message="Checkpoint directory .* exists and is not empty",
                    module=r"lightning\.pytorch\.callbacks\.model_checkpoint",
                )
            return getattr(trainer, method)(model, ckpt_path=ckpt_path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:  # only a checkpoint is unpickled inside a Trainer's run
        raise refused(str(trainer.ckpt_path or ckpt_path), exc) from None


class RayTrainReport(Callback):
    """Reports metrics and the full training state to Ray Train at the run's checkpoint cadence (its
    ModelCheckpoint's `every_n_train_steps`, else every epoch) and when training ends, so that
    `RunConfig(storage_path=...)` holds the checkpoints and a restarted worker group (`FailureConfig`)
    resumes where the last one was reported. Ray's own RayTrainReportCallback reports only at epoch ends,
    which a resampled shard stream may never reach. Every rank reports (`ray.train.report` is a barrier
    across workers); rank 0 writes the file, so only its report carries the checkpoint directory."""

    CHECKPOINT_NAME = "checkpoint.ckpt"

    def __init__(self, every_n_train_steps: int | None = None):
        self.every_n_train_steps = every_n_train_steps
        self.last_reported = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_train_steps is None:
            checkpoints = trainer.checkpoint_callback
            self.every_n_train_steps = getattr(checkpoints, "_every_n_train_steps", 0) or 0
        self.last_reported = trainer.global_step  # nothing new at the step a run starts (or resumes) from

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self.report(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.every_n_train_steps:
            self.report(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.report(trainer)  # Result.checkpoint is the final state

    def report(self, trainer: Trainer) -> None:
        import ray.train

        if trainer.global_step == self.last_reported:  # accumulating batches, or reported just now
            return
        self.last_reported = trainer.global_step
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(step=trainer.global_step, epoch=trainer.current_epoch)
        with tempfile.TemporaryDirectory(prefix="reelmill-ray-checkpoint-") as directory:
            # every rank takes part, rank 0 writes the file
            trainer.save_checkpoint(os.path.join(directory, self.CHECKPOINT_NAME), weights_only=False)
            checkpoint = ray.train.Checkpoint.from_directory(directory) if trainer.is_global_zero else None
            ray.train.report(
                metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step-{trainer.global_step:07d}"
            )


def ray_train_loop(config: dict):
    """What each Ray Train worker runs (`TorchTrainer(ray_train_loop, train_loop_config={"args": [...]})`):
    the same CLI arguments as `reelmill train fit` (without `fit`), on Ray's DDP strategy and cluster
    environment, one device per worker. Metrics and checkpoints go to Ray Train (RayTrainReport). A
    worker group restarted after a failure resumes from Ray's latest checkpoint; the first attempt from
    `ckpt_path` in the config, when there is one."""
    import contextlib

    import ray.train
    import ray.train.lightning as rtl

    configure_logging()  # a worker prints as `reelmill train` does: each line once, no notices
    cli = TrainCLI(
        VideoDiTModule,
        ShardDataModule,
        args=with_recipe_paths(list(config["args"])),
        run=False,
        save_config_kwargs={"overwrite": True},
        trainer_overrides={
            "strategy": rtl.RayDDPStrategy(),
            "plugins": [rtl.RayLightningEnvironment()],
            "devices": "auto",
            "accelerator": "auto",
        },
    )
    trainer = rtl.prepare_trainer(cli.trainer)
    trainer.callbacks.append(RayTrainReport())
    restored = ray.train.get_checkpoint()
    with restored.as_directory() if restored else contextlib.nullcontext() as directory:
        ckpt_path = os.path.join(directory, RayTrainReport.CHECKPOINT_NAME) if directory else None
        safe_run(
            trainer,
            "fit",
            cli.model,
            datamodule=cli.datamodule,
            ckpt_path=ckpt_path or config.get("ckpt_path"),
        )
    cli.trainer = trainer
    cli.after_fit()
    return trainer


_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def with_recipe_paths(args: list[str]) -> list[str]:
    """`args` with every `--config NAME` (or `-c NAME`, `--config=NAME`) that is a bare name and no file
    made the path of that training recipe, as curate takes its presets; an unknown name is a ConfigError
    that lists the recipes. Files, paths and inline YAML pass through to LightningCLI as they were."""

    def resolved(value: str) -> str:
        if os.path.exists(value) or not _BARE_NAME.fullmatch(value):
            return value
        return str(resolve_preset("train", value))

    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c") and i + 1 < len(args):
            out += [arg, resolved(args[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolved(arg.removeprefix("--config="))
        out.append(arg)
        i += 1
    return out


def main(argv: list[str]) -> int:
    """`reelmill train ARGS`: a bad input or setting (a missing model, no shards) is a message and exit
    status 2, as for every other command; LightningCLI reports bad flags itself."""
    try:
        TrainCLI(
            VideoDiTModule,
            ShardDataModule,
            args=with_recipe_paths(argv),
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "reelmill train"},
        )
    except (ConfigError, InputError) as exc:
        where = (
            " (in reelmill train: --model.vae / --model.text_encoder)"
            if isinstance(exc, EncoderError)
            else ""
        )
        print(f"reelmill train: error: {exc}{where}", file=sys.stderr)
        return 2
    except NothingUsable as exc:
        # raised in a loader worker, its message carries the worker's traceback: our words are its last line
        last = str(exc).strip().splitlines()[-1]
        print(f"reelmill train: error: {last.split('NothingUsable: ', 1)[-1]}", file=sys.stderr)
        return 2
    return 0
