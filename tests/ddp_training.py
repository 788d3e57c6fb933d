"""Trains the tiny VideoDiT for a few steps with Lightning's DDP on 2 CPU processes (gloo) and saves
each rank's weights and EMA to OUT/rank{R}.pt. Run as a script: Lightning's DDP launcher starts the
second rank by running this file again."""

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from training.module import VideoDiTModule


class RandomClips(Dataset):
    """Distinct latent clips per index, so the two ranks train on different data."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "latents": torch.randn(4, 2, 4, 4, generator=g),
            "text": torch.randn(3, 16, generator=g),
            "text_mask": torch.ones(3, dtype=torch.bool),
        }


class Recording(VideoDiTModule):
    """Remembers a checksum of every batch it trained on."""

    def training_step(self, batch, batch_idx):
        self.seen.append(float(batch["latents"].sum()))
        return super().training_step(batch, batch_idx)


def main(out: Path) -> None:
    torch.manual_seed(0)
    module = Recording("tiny", {"in_channels": 4, "text_dim": 16}, lr=1e-3, warmup_steps=1, ema_decay=0.5)
    module.seen = []
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(module, DataLoader(RandomClips(), batch_size=2))
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    torch.save({"state": state, "seen": module.seen}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
