"""The captioning stage on Ray Data, shared by `curate` and `recaption`.

A job's CPU map prepares the frames of a task's clips (`prep_columns`); the actor pool added by
`add_caption_actors` loads the VLM once per actor and turns them into `CaptionOutcome`s; the job's
own write map applies the outcomes to its records. The actors reserve memory, so Ray Data does not
fuse the CPU map into them (where decoding would wait on the model, one task at a time).
"""

from __future__ import annotations

import pickle
from dataclasses import asdict

import ray

from captioning.caption_config import CaptionConfig
from captioning.captioner import CaptionStats
from captioning.prompt_hints import ClipHints
from captioning.prompts import PromptError, load_prompt
from captioning.stage import CaptionModelStage, CaptionPrep
from curation.config import ConfigError


def check_captioning(cfg: CaptionConfig) -> None:
    """Fail before any work starts when the prompt or the model cannot be found."""
    if not cfg.enabled:
        return
    try:
        load_prompt(cfg.prompt_id)
    except PromptError as exc:
        raise ConfigError(f"captioning.prompt_id: {exc}") from None
    from captioning.vlm import ModelLoadError, check_model_available

    try:
        check_model_available(cfg.vlm)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None


def prep_columns(
    clips: list[tuple[str, bytes]], cfg: CaptionConfig, hints: dict[str, ClipHints] | None = None
) -> dict:
    """The row columns the caption actors read: prepared frames and the clips that failed to decode."""
    prepared, failed = CaptionPrep(cfg).run(clips, hints)
    return {"prepared": pickle.dumps(prepared), "failed": pickle.dumps(failed)}


class CaptionActor:
    """Ray Data actor: the VLM is loaded once, then captions task after task.

    Reads `prepared`/`failed`, writes `outcomes` (pickled `CaptionOutcome`s) and `caption_stats`
    (a `CaptionStats` as a dict); every other column passes through.
    """

    def __init__(self, cfg: CaptionConfig):
        self.stage = CaptionModelStage(cfg)

    def __call__(self, batch: dict) -> dict:
        out = {k: list(v) for k, v in batch.items() if k not in ("prepared", "failed")}
        out["outcomes"], out["caption_stats"] = [], []
        for prepared, failed in zip(batch["prepared"], batch["failed"], strict=True):
            outcomes, stats = self.stage.run(pickle.loads(prepared), pickle.loads(failed))
            out["outcomes"].append(pickle.dumps(outcomes))
            out["caption_stats"].append(pickle.dumps(asdict(stats)))
        return out


def add_caption_actors(ds, cfg: CaptionConfig, retry_args: dict | None = None):
    """Append the captioning actor pool to a dataset of rows with `prepared` and `failed` columns;
    `retry_args` (`actor_retry_args`) bound the retries of a task whose actor died."""
    from jobs.ray_runtime import retry_args_accepted

    with retry_args_accepted():
        return _add_caption_actors(ds, cfg, retry_args)


def _add_caption_actors(ds, cfg: CaptionConfig, retry_args: dict | None):
    return ds.map_batches(
        CaptionActor,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=1,  # a row is a whole task: its windows are batched inside the backend
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus,
        num_gpus=cfg.num_gpus,
        memory=int(cfg.memory_gb * 2**30),
        **(retry_args or {}),
    )


def caption_report(
    cfg: CaptionConfig, task_stats: list[dict], fresh_stats: list[dict], wall_s: float
) -> dict:
    """run.json's `captioning` section: totals over every task (markers, so resumed runs count all),
    and throughput per actor over the tasks run now."""
    if not cfg.enabled:
        return {"enabled": False}
    total = CaptionStats(worker="all")
    for stats in task_stats:
        total.add(CaptionStats(**stats))
    per_actor: dict[str, CaptionStats] = {}
    for stats in fresh_stats:
        actor = per_actor.setdefault(stats["worker"], CaptionStats(worker=stats["worker"]))
        actor.add(CaptionStats(**stats))
        actor.runtime = stats["runtime"]
    prompt = load_prompt(cfg.prompt_id)
    totals = asdict(total)
    del totals["worker"], totals["runtime"]
    return {
        "enabled": True,
        "model": cfg.vlm.model,
        "prompt_id": cfg.prompt_id,
        "prompt_sha": prompt.sha,
        "on_failure": cfg.on_failure,
        **totals,
        "clips_per_s": sum(s["clips"] for s in fresh_stats) / wall_s if wall_s else 0.0,
        "actors": [
            {
                "worker": a.worker,
                **a.runtime,
                "clips": a.clips,
                "new_tokens": a.new_tokens,
                "generate_s": round(a.generate_s, 3),
                "clips_per_s": a.clips / a.generate_s if a.generate_s else 0.0,
                "tokens_per_s": a.new_tokens / a.generate_s if a.generate_s else 0.0,
            }
            for a in per_actor.values()
        ],
    }
