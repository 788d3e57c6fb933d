"""A Lightning callback that measures a few held-out samples every N steps and logs the numbers.

The flow loss says whether the network fits its data, not whether its videos follow the text, keep their
subject or flicker. Every `every_n_steps` this samples the same few held-out prompts (EMA weights, a fixed
seed, as `SampleVideos` does) and logs the cheap metrics of `reelmill eval` to the trainer's loggers
(TensorBoard, CSV): `eval/clipsim`, `eval/subject_consistency`, `eval/frame_diff`, `eval/flicker`,
`eval/motion`, ..., and `eval/fvd` when a feature network is configured and real clips are at hand
(`real_shards`, or the data module's `val_shards` when they hold clips). With a handful of samples FVD is a
trend over training, not a number to compare with papers; `reelmill eval` on a checkpoint gives that.

The metric models are loaded once, at the start of fitting, on rank zero (a missing one stops the run before
its first step, naming the key); the real clips' features are computed once.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from curation import config as config_lib
from curation.config import ConfigError
from training.evaluation.config import EvalConfig


class EvalMetrics(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 1000,
        prompts: list[str] | None = None,
        num_prompts: int = 4,
        steps: int = 20,
        guidance: float = 5.0,
        seed: int = 0,
        eval_config: str = "default",
        eval_set: list[str] | None = None,
        real_shards: str | None = None,
        num_real: int = 16,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float | None = None,
    ):
        """`prompts`: None takes the first `num_prompts` captions of the data module's `val_shards`.
        `eval_config`, `eval_set`: the eval config (a preset of configs/eval/ or a YAML path, then `key=value`
        assignments, as `reelmill eval --config/--set` take them). `real_shards`: clip shards for FVD (None:
        the data module's `val_shards`, when they hold clips). The clip size defaults to the data module's."""
        self.every_n_steps, self.prompts, self.num_prompts = every_n_steps, prompts, num_prompts
        self.steps, self.guidance, self.seed = steps, guidance, seed
        self.eval_config, self.eval_set = eval_config, list(eval_set or [])
        self.real_shards, self.num_real = real_shards, num_real
        self.size_given = {"num_frames": num_frames, "height": height, "width": width, "fps": fps}
        self.suite = None
        self.real_features = None
        self.logged: list[dict] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.suite is None:
            from training.evaluation.suite import EvalSuite

            cfg = config_lib.load(EvalConfig, "eval", self.eval_config, self.eval_set)
            self.suite = EvalSuite(cfg, str(pl_module.device) if cfg.device == "auto" else None)

    def clip_size(self, trainer) -> dict:
        datamodule = getattr(trainer, "datamodule", None)
        size = {k: v if v is not None else getattr(datamodule, k, None) for k, v in self.size_given.items()}
        missing = [k for k, v in size.items() if v is None]
        if missing:
            raise ConfigError(f"EvalMetrics: no data module gives the clip size; set {', '.join(missing)}")
        return size

    def held_out_prompts(self, trainer) -> list[str]:
        from training.sample_callback import prompts_or_held_out

        self.prompts = prompts_or_held_out(self.prompts, trainer, self.num_prompts)
        return self.prompts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if not any(row["step"] == trainer.global_step for row in self.logged):
            self.evaluate(trainer, pl_module, trainer.global_step)

    @rank_zero_only
    def evaluate(self, trainer, pl_module, step: int) -> dict | None:
        prompts = self.held_out_prompts(trainer)
        if not prompts or self.suite is None:
            rank_zero_warn(
                "EvalMetrics: no prompts and no data.val_shards to take captions from; not evaluating"
            )
            self.every_n_steps = 0
            return None
        from training.video_out import to_frames

        started = time.perf_counter()
        size = self.clip_size(trainer)
        videos = pl_module.generate_videos(
            prompts, int(size["num_frames"]), int(size["height"]), int(size["width"]),
            steps=self.steps, guidance=self.guidance, seed=self.seed,
        )  # fmt: skip
        frames = [to_frames(v) for v in videos]
        measured = self.suite.measure(frames, prompts, float(size["fps"]))
        metrics = {f"eval/{k}": v for k, v in measured["metrics"].items() if v is not None}
        real = self.real_fvd_features(trainer, size)
        if real is not None:
            value, _ = self.suite.fvd(real, self.suite.features(frames))
            if value is not None:
                metrics["eval/fvd"] = value
        metrics["eval/seconds"] = time.perf_counter() - started
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.logged.append({"step": step, **metrics})
        return metrics

    def real_fvd_features(self, trainer, size: dict):
        """Feature-network features of the real clips, computed on first use; None without FVD."""
        if self.suite.fvd_net is None:
            return None
        if self.real_features is None:
            from training.evaluation.real_clips import read_real_clips

            datamodule = getattr(trainer, "datamodule", None)
            shards = self.real_shards
            if shards is None and getattr(datamodule, "kind", None) == "video":
                shards = getattr(datamodule, "val_shards", None)
            if not shards:
                rank_zero_warn("EvalMetrics: no real_shards (clip shards) to compare with; not computing FVD")
                self.real_features = False
                return None
            try:
                videos, _, _ = read_real_clips(
                    shards, self.num_real, size, "EvalMetrics real_shards", rank_zero_warn
                )
            except ConfigError as exc:
                rank_zero_warn(f"EvalMetrics: {exc}; not computing FVD")
                self.real_features = False
                return None
            self.real_features = self.suite.features(videos)
        return self.real_features if self.real_features is not False else None
