"""`reelmill train`: Lightning's CLI over the video DiT module and the shard data module.

    reelmill train fit --config configs/train/dit-tiny-cpu.yaml --data.shards 'OUT/shards/*.tar'
    reelmill train fit --config configs/train/dit-tiny-cpu.yaml --data.shards ... --ckpt_path last

Everything LightningCLI offers works (`--print_config`, `--trainer.*`, `--model.*`, `--data.*`,
several `--config` files). On top of it, a run lives in one directory, `trainer.default_root_dir`:
unless the recipe names loggers, TensorBoard and CSV logs go to `tensorboard/` and `csv/` there, and
every ModelCheckpoint without a `dirpath` writes to `checkpoints/` there, so `--ckpt_path last`
finds the last checkpoint of the run when the same command is started again after a crash. When
training ends, the final state is saved to `checkpoints/last.ckpt` as well.

Resuming reads the checkpoint with `weights_only=True` whatever Lightning's default or the environment
(`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`) says: a checkpoint is a pickle, and one holding anything but tensors
and plain values is refused (exit status 2) before any of it runs. `--weights_only false` is refused too.
A data stream with nothing usable (`training.data.NothingUsable`) is an error line and exit status 2.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from curation.config import ConfigError
from curation.inputs import InputError
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

    def instantiate_trainer(self, **kwargs):
        kwargs = {**self.trainer_overrides, **kwargs}
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = trainer_config.get("default_root_dir") or os.getcwd()
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = [TensorBoardLogger(root, name="tensorboard"), CSVLogger(root, name="csv")]
        trainer = super().instantiate_trainer(**kwargs)
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
        self.trainer.save_checkpoint(last)
        self.trainer.print(f"reelmill train: step {self.trainer.global_step}, final checkpoint {last}")


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
        return getattr(trainer, method)(model, ckpt_path=ckpt_path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:  # only a checkpoint is unpickled inside a Trainer's run
        raise refused(str(trainer.ckpt_path or ckpt_path), exc) from None


def ray_train_loop(config: dict):
    """What each Ray Train worker runs (`TorchTrainer(ray_train_loop, train_loop_config={"args": [...]})`):
    the same CLI arguments as `reelmill train fit` (without `fit`; `ckpt_path` in the config resumes),
    on Ray's DDP strategy and cluster environment, one device per worker."""
    import ray.train.lightning as rtl

    cli = TrainCLI(
        VideoDiTModule,
        ShardDataModule,
        args=list(config["args"]),
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
    safe_run(trainer, "fit", cli.model, datamodule=cli.datamodule, ckpt_path=config.get("ckpt_path"))
    cli.trainer = trainer
    cli.after_fit()
    return trainer


def main(argv: list[str]) -> int:
    """`reelmill train ARGS`: a bad input or setting (a missing model, no shards) is a message and exit
    status 2, as for every other command; LightningCLI reports bad flags itself."""
    try:
        TrainCLI(
            VideoDiTModule,
            ShardDataModule,
            args=argv,
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
