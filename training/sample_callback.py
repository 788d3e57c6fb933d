"""A Lightning callback that samples a few held-out prompts every N steps and keeps the videos.

Loss curves say little about a video model; watching what it makes of the same prompts as training
goes on says more. Prompts are given, or taken from the validation shards' captions (held out from
training). Videos are sampled from the EMA weights with a fixed seed, so the row of samples over
steps shows the model changing, not the noise. They are written as mp4s in the run's directory
(`trainer.default_root_dir/samples/step-SSSSSSS-P.mp4`, with the prompt beside it as `.txt`) and logged to TensorBoard as a strip of frames.
"""

from __future__ import annotations

import os

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from training.video_out import to_frames, write_mp4


def held_out_captions(shards: str | list[str], count: int) -> list[str]:
    """The dense captions of the first `count` samples of `shards` that have one, in shard order."""
    import webdataset as wds

    from curation.inputs import expand_shards
    from training.data import caption_variants

    urls = expand_shards([shards] if isinstance(shards, str) else list(shards))
    captions = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        variants = caption_variants(sample)
        if variants:
            captions.append(variants[0])
        if len(captions) == count:
            break
    return captions


def prompts_or_held_out(prompts: list[str] | None, trainer: L.Trainer, count: int) -> list[str]:
    """`prompts` when given, else the first `count` captions of the data module's `val_shards` (none
    without them): the held-out prompts the sampling and eval callbacks watch over training."""
    if prompts:
        return list(prompts)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not getattr(datamodule, "val_shards", None):
        return []
    return held_out_captions(datamodule.val_shards, count)


class SampleVideos(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 1000,
        prompts: list[str] | None = None,
        num_prompts: int = 2,
        steps: int = 30,
        guidance: float = 5.0,
        seed: int = 0,
        fps: float | None = None,
    ):
        """`prompts`: None takes the first `num_prompts` captions of the data module's `val_shards`.
        The clip size (frames, height, width) and `fps` are the data module's."""
        self.every_n_steps, self.prompts, self.num_prompts = every_n_steps, prompts, num_prompts
        self.steps, self.guidance, self.seed, self.fps = steps, guidance, seed, fps
        self.written: list[str] = []

    def held_out_prompts(self, trainer: L.Trainer) -> list[str]:
        self.prompts = prompts_or_held_out(self.prompts, trainer, self.num_prompts)
        return self.prompts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            self.sample(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if not any(f"step-{trainer.global_step:07d}-" in p for p in self.written):
            self.sample(trainer, pl_module, trainer.global_step)

    @rank_zero_only
    def sample(self, trainer: L.Trainer, pl_module, step: int) -> None:
        prompts = self.held_out_prompts(trainer)
        if not prompts:
            rank_zero_warn(
                "SampleVideos: no prompts and no data.val_shards to take captions from; not sampling"
            )
            self.every_n_steps = 0
            return
        datamodule = trainer.datamodule
        size = (datamodule.num_frames, datamodule.height, datamodule.width)
        fps = self.fps or datamodule.fps
        directory = os.path.join(trainer.default_root_dir, "samples")
        os.makedirs(directory, exist_ok=True)
        videos = pl_module.generate_videos(
            prompts, *size, steps=self.steps, guidance=self.guidance, seed=self.seed
        )
        tensorboard = next((lg for lg in trainer.loggers if hasattr(lg.experiment, "add_images")), None)
        for i, (prompt, video) in enumerate(zip(prompts, videos, strict=True)):
            path = os.path.join(directory, f"step-{step:07d}-{i}.mp4")
            frames = to_frames(video)  # [T, H, W, 3] uint8
            write_mp4(frames, path, fps=fps)
            self.written.append(path)
            with open(os.path.join(directory, f"step-{step:07d}-{i}.txt"), "w") as f:
                f.write(prompt + "\n")
            if tensorboard is not None:
                strip = torch.from_numpy(frames[:: max(1, len(frames) // 4)][:4]).permute(0, 3, 1, 2)
                tensorboard.experiment.add_images(f"samples/{i}", strip, step, dataformats="NCHW")
