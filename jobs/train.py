"""`reelmill train`: Lightning's CLI over the video DiT module and the shard data module.

    reelmill train fit --config configs/train/dit-tiny-cpu.yaml --data.shards 'OUT/shards/*.tar'
    reelmill train fit --config configs/train/dit-tiny-cpu.yaml --data.shards ... --ckpt_path last

Everything LightningCLI offers works (`--print_config`, `--trainer.*`, `--model.*`, `--data.*`,
several `--config` files). On top of it, a run lives in one directory, `trainer.default_root_dir`:
unless the recipe names loggers, TensorBoard and CSV logs go to `tensorboard/` and `csv/` there, and
every ModelCheckpoint without a `dirpath` writes to `checkpoints/` there, so `--ckpt_path last`
finds the last checkpoint of the run when the same command is started again after a crash. When
training ends, the final state is saved to `checkpoints/last.ckpt` as well.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from curation.config import ConfigError
from curation.inputs import InputError
from training.data import ShardDataModule
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

    def after_fit(self) -> None:
        checkpoints = self.trainer.checkpoint_callback
        if checkpoints is None or not checkpoints.dirpath:
            return
        last = os.path.join(checkpoints.dirpath, "last.ckpt")
        self.trainer.save_checkpoint(last)
        self.trainer.print(f"reelmill train: step {self.trainer.global_step}, final checkpoint {last}")


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
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=config.get("ckpt_path"))
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
    return 0
