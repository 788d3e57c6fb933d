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

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from training.data import ShardDataModule
from training.module import VideoDiTModule


class TrainCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs):
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


def main(argv: list[str]) -> int:
    TrainCLI(
        VideoDiTModule,
        ShardDataModule,
        args=argv,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "reelmill train"},
    )
    return 0
