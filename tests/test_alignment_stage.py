"""The caption alignment stage: per-clip numbers checked against open_clip called directly, a tiny CLIP
fine-tuned here that tells two clips apart (so a swapped caption loses its margin and a rule drops it),
the config checks, and `curate` / `recaption` end to end on a local Ray with the tiny VLM."""

import json
import pickle

import numpy as np
import open_clip
import pytest
import torch
from clip_fitting import fit_clip_to_captions
from PIL import Image

from captioning.alignment_stage import (
    AlignmentFrames,
    AlignmentStage,
    alignment_frames,
    check_alignment_model,
)
from captioning.caption_config import AlignmentConfig, CaptionConfig, CaptionFramesConfig
from captioning.captioner import CaptionOutcome
from captioning.video_frames import prepare_clip
from conftest import caption_overrides, model_overrides, shard_samples
from curation import config, synthetic
from curation.config import ConfigError
from curation.filters import decide, rule_values
from curation.layout import OutputLayout
from curation.record import ClipRecord
from curation.scoring.tiny_models import TINY_CLIP_NAME, build_tiny_aesthetic_models
from curation.scoring_config import AestheticConfig, FilterConfig, FilterRule
from curation.shards import iter_samples
from curation.synthetic import Shot, VideoSpec
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig, RecaptionConfig
from jobs.recaption import run_recaption

SOURCES = ("red", "mandelbrot", "testsrc2")
CAPTIONS = ("a plain red screen", "a swirling fractal", "a test card with a moving clock")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    """Three 3 s clips made with ffmpeg lavfi, as mp4 bytes."""
    d = tmp_path_factory.mktemp("align-clips")
    return {
        name: synthetic.make_video(d / f"{name}.mp4", VideoSpec([Shot(name, 75)], 160, 120)).read_bytes()
        for name in SOURCES
    }


@pytest.fixture(scope="module")
def frames(clips) -> AlignmentFrames:
    caption_frames = CaptionFramesConfig(fps=2.0, max_pixels=160 * 120)
    prepared = [prepare_clip(name, mp4, caption_frames) for name, mp4 in clips.items()]
    return alignment_frames(prepared, AlignmentConfig(enabled=True, fps=1.0, max_pixels=64 * 48))


def _caption(i: int, summary: str) -> dict:
    return {
        "summary": summary,
        "segments": [
            {"start_s": 0.0, "end_s": 1.5, "text": f"the first half of clip {i}"},
            {"start_s": 1.5, "end_s": 3.0, "text": f"the second half of clip {i}"},
        ],
    }


def _outcomes(summaries) -> list[CaptionOutcome]:
    return [
        CaptionOutcome(name, caption=_caption(i, s), metrics={"num_segments": 2})
        for i, (name, s) in enumerate(zip(SOURCES, summaries, strict=True))
    ]


def _clip_cfg(models: dict, pretrained: str | None = None) -> AestheticConfig:
    fields = {k: v for k, v in models.items() if k != "head_weights"}
    return AestheticConfig(**fields | ({"clip_pretrained": pretrained} if pretrained else {}), device="cpu")


class Towers:
    """open_clip called directly (not through the code under test): normalised embeddings."""

    def __init__(self, clip: AestheticConfig):
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            clip.clip_model, pretrained=clip.clip_pretrained
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(clip.clip_model)

    @torch.no_grad()
    def image(self, frames: np.ndarray) -> np.ndarray:
        pixels = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames])
        return torch.nn.functional.normalize(self.model.encode_image(pixels), dim=-1).numpy()

    @torch.no_grad()
    def text(self, text: str) -> np.ndarray:
        return torch.nn.functional.normalize(self.model.encode_text(self.tokenizer([text])), dim=-1)[
            0
        ].numpy()

    def clip(self, frames: np.ndarray) -> np.ndarray:
        mean = self.image(frames).mean(axis=0)
        return mean / np.linalg.norm(mean)


def test_alignment_frames_are_caption_frames_at_the_alignment_rate(clips, frames):
    assert [c.key for c in frames.clips] == list(SOURCES) and not frames.failed
    for clip in frames.clips:
        assert list(clip.timestamps) == [0.0, 1.0, 2.0]  # 2 fps caption frames, taken at 1 fps
        assert clip.frames.shape == (3, 48, 64, 3) and clip.duration_s == pytest.approx(3.0, abs=0.05)
    few = alignment_frames(
        [prepare_clip("c", clips["red"], CaptionFramesConfig(fps=2.0))],
        AlignmentConfig(fps=10.0, max_frames=2),
    )
    assert list(few.clips[0].timestamps) == [0.0, 2.5]  # every frame at most, then 2 evenly


def test_stage_numbers_match_open_clip_called_directly(tiny_aesthetic, frames):
    clip = _clip_cfg(tiny_aesthetic)
    outcomes = _outcomes(CAPTIONS)
    stats = AlignmentStage(AlignmentConfig(enabled=True, batch_size=2), clip).run(outcomes, frames)
    assert stats.aligned == stats.clips == 3 and stats.frames == 9 and not stats.errors
    towers = Towers(clip)
    by_key = {c.key: c for c in frames.clips}
    summaries = {o.key: o.caption["summary"] for o in outcomes}
    assert sorted(o.metrics["alignment"]["baseline_clip"] for o in outcomes) == sorted(SOURCES)
    for outcome in outcomes:
        got = outcome.metrics["alignment"]
        clip_frames = by_key[outcome.key]
        whole = towers.clip(clip_frames.frames)
        assert got["model"] == TINY_CLIP_NAME and outcome.metrics["num_segments"] == 2
        assert got["summary"] == pytest.approx(float(whole @ towers.text(summaries[outcome.key])), abs=1e-5)
        other = got["baseline_clip"]
        assert other != outcome.key  # a derangement: another clip's summary, on this clip's frames
        assert got["baseline"] == pytest.approx(float(whole @ towers.text(summaries[other])), abs=1e-5)
        assert got["margin"] == pytest.approx(got["summary"] - got["baseline"], abs=1e-9)
        # segment 0-1.5 s: the frames at 0 and 1 s; segment 1.5-3 s: the frame at 2 s
        spans = [towers.clip(clip_frames.frames[[0, 1]]), towers.clip(clip_frames.frames[[2]])]
        for span, seg, value in zip(spans, outcome.caption["segments"], got["segments"], strict=True):
            assert value == pytest.approx(float(span @ towers.text(seg["text"])), abs=1e-5)


def test_a_batch_of_one_has_no_baseline_and_its_rule_lets_it_pass(tiny_aesthetic, frames):
    (outcome,) = _outcomes(CAPTIONS)[:1]
    one = AlignmentFrames(clips=frames.clips[:1])
    stats = AlignmentStage(AlignmentConfig(enabled=True), _clip_cfg(tiny_aesthetic)).run([outcome], one)
    got = outcome.metrics["alignment"]
    assert got["summary"] is not None and got["baseline"] is None and got["margin"] is None
    assert stats.without_baseline == 1
    rules = FilterConfig(rules=[FilterRule("caption_alignment_margin", min=0.5)])
    assert decide(rule_values(_record(outcome)), rules) == (True, None)


def _record(outcome: CaptionOutcome) -> ClipRecord:
    record = ClipRecord(outcome.key, "src.mp4", 0.0, 3.0, 0, 75, 0, 0, 25.0, 75, 3.0, kept=True)
    record.caption, record.caption_metrics = outcome.caption, outcome.metrics
    return record


def _fine_tune(models: dict, frames: AlignmentFrames, path, steps: int = 12) -> str:
    """The tiny CLIP trained a few steps (contrastive, as CLIP is) to pair each clip with its caption."""
    torch.manual_seed(0)
    model, preprocess, _ = open_clip.create_model_and_transforms(
        TINY_CLIP_NAME, pretrained=models["clip_pretrained"]
    )
    groups = [c.frames for c in frames.clips]
    fit_clip_to_captions(model, preprocess, open_clip.get_tokenizer(TINY_CLIP_NAME), groups, CAPTIONS, steps)
    torch.save(model.state_dict(), path)
    return str(path)


def test_a_swapped_caption_loses_its_margin_and_the_rule_drops_it(tiny_aesthetic, frames, tmp_path):
    clip = _clip_cfg(tiny_aesthetic, _fine_tune(tiny_aesthetic, frames, tmp_path / "tuned.pt"))
    stage = AlignmentStage(AlignmentConfig(enabled=True), clip)
    own, swapped = _outcomes(CAPTIONS), _outcomes((CAPTIONS[1], CAPTIONS[0], CAPTIONS[2]))
    stage.run(own, frames)
    stage.run(swapped, frames)
    margin = {o.key: o.metrics["alignment"]["margin"] for o in own}
    margin_swapped = {o.key: o.metrics["alignment"]["margin"] for o in swapped}
    assert all(m > 0 for m in margin.values()), margin
    assert margin_swapped["red"] < 0 and margin_swapped["mandelbrot"] < 0, margin_swapped
    rules = FilterConfig(rules=[FilterRule("caption_alignment_margin", min=0.0)])
    assert [decide(rule_values(_record(o)), rules) for o in own] == [(True, None)] * 3
    decisions = {o.key: decide(rule_values(_record(o)), rules) for o in swapped}
    assert decisions["red"] == decisions["mandelbrot"] == (False, "caption_alignment_margin<0")
    summary = FilterConfig(rules=[FilterRule("caption_alignment", max=-1.0)])  # the summary similarity
    assert decide(rule_values(_record(own[0])), summary) == (False, "caption_alignment>-1")


def test_a_caption_rule_without_the_stage_is_a_config_error_naming_the_key(tiny_aesthetic):
    rules = ["filters.rules=[{score: brightness, min: 0.1}, {score: caption_alignment_margin, min: 0.0}]"]
    with pytest.raises(ConfigError, match=r"filters.rules\[1\].score: .*captioning.alignment.enabled=true"):
        config.load(CurateJobConfig, "curate", "default", rules)
    with pytest.raises(ConfigError, match=r"filters.rules\[0\].score: .*captioning.enabled=true"):
        config.load(
            CurateJobConfig,
            "curate",
            "default",
            ["filters.rules=[{score: caption_alignment, min: 0.2}]", "captioning.enabled=false"],
        )
    ok = config.load(CurateJobConfig, "curate", "default", [*rules, "captioning.alignment.enabled=true"])
    assert ok.filters.rules[1].score == "caption_alignment_margin"
    with pytest.raises(ConfigError, match="did you mean 'caption_alignment_margin'"):
        config.load(
            CurateJobConfig, "curate", "default", ["filters.rules=[{score: caption_alignment_margn}]"]
        )
    on = CaptionConfig(alignment=AlignmentConfig(enabled=True, clip_model_config="/nowhere/x.json"))
    with pytest.raises(ConfigError, match="captioning.alignment.clip_model_config: no such file"):
        check_alignment_model(on)
    fallback = CaptionConfig(alignment=AlignmentConfig(enabled=True))
    with pytest.raises(ConfigError, match="scoring.aesthetic.clip_pretrained: 'nope'"):
        check_alignment_model(fallback, AestheticConfig(clip_model="ViT-B-32", clip_pretrained="nope"))
    check_alignment_model(fallback, _clip_cfg(tiny_aesthetic))


# end to end: two tasks (one video each): one of two clips, whose identical stand-in captions give a
# margin of exactly 0 (the baseline is the same summary on the same frames), one of a single clip
# (no baseline: margin null, the rule lets it pass)
RULE_MIN = 0.001
ALIGN = [
    "captioning.alignment.enabled=true",
    "captioning.cpus=0.5",  # split 1 + captioning 0.5 + alignment 0.5: the module's 2-CPU Ray
    "captioning.alignment.cpus=0.5",
    "captioning.alignment.memory_gb=1",
]


@pytest.fixture(scope="module")
def curated(ray_local, tiny_vlm, tiny_aesthetic, tmp_path_factory):
    videos = tmp_path_factory.mktemp("align-videos")
    synthetic.make_video(videos / "two.mp4", VideoSpec(synthetic.shot_list([70, 80]), 192, 144))
    synthetic.make_video(videos / "one.mp4", VideoSpec([Shot("gradients", 80)], 192, 144))
    out = tmp_path_factory.mktemp("align-curated") / "out"
    overrides = [
        *caption_overrides(tiny_vlm),
        *model_overrides(tiny_aesthetic),
        *ALIGN,
        "scoring.aesthetic.enabled=false",  # alignment still takes the run's aesthetic CLIP
        # no camera hints in the prompt: the tiny VLM was fit to answer prompts without measured hints
        "scoring.motion.enabled=false",
        "scoring.camera.enabled=false",
        "input.videos_per_task=1",
        "shards.keep_dropped=true",
        f"filters.rules=[{{score: caption_alignment_margin, min: {RULE_MIN}}}]",
    ]
    cfg = config.load(CurateJobConfig, "curate", "default", overrides)
    return out, run_curate([str(videos)], str(out), cfg, log=lambda _: None)


def _records(root) -> dict[str, dict]:
    return {k: json.loads(s["json"]) for k, s in shard_samples(OutputLayout(str(root))).items()}


def _dropped(out) -> dict[str, dict]:
    """The records of OUT/dropped/ (`shards.keep_dropped`)."""
    return {
        s["__key__"]: json.loads(s["json"])
        for p in sorted((out / "dropped").glob("*.tar"))
        for s in iter_samples(str(p))
    }


def test_curate_writes_alignment_and_the_rule_drops_as_the_numbers_say(curated):
    out, run = curated
    layout = OutputLayout(str(out))
    kept, dropped = _records(out), _dropped(out)
    assert len(kept) == 1 and len(dropped) == 2
    rows = {r["clip_id"]: r for r in layout.read_manifest(layout.clips_manifest).to_pylist()}
    for key, record in {**kept, **dropped}.items():
        alignment = record["caption_metrics"]["alignment"]
        assert alignment["model"] == TINY_CLIP_NAME and len(alignment["segments"]) == 2
        assert rows[key]["caption_metrics"]["alignment"] == alignment
        margin = alignment["margin"]
        fails = margin is not None and margin < RULE_MIN
        assert record["kept"] is not fails and rows[key]["kept"] is not fails
        if fails:
            assert (
                record["drop_reason"] == rows[key]["drop_reason"] == f"caption_alignment_margin<{RULE_MIN:g}"
            )
    (only,) = kept.values()
    assert only["caption_metrics"]["alignment"]["margin"] is None  # alone in its task: no baseline
    assert all(d["caption_metrics"]["alignment"]["margin"] == 0.0 for d in dropped.values())
    assert run["counts"]["drop_reasons"] == {f"caption_alignment_margin<{RULE_MIN:g}": 2}
    assert run["filters"]["drops_by_rule"] == {f"caption_alignment_margin<{RULE_MIN:g}": 2}
    assert run["timings"]["stage_task_s"]["caption alignment"] > 0


def test_recaption_refreshes_the_alignment(curated, tiny_vlm, tmp_path):
    out, _ = curated
    other = build_tiny_aesthetic_models(tmp_path / "other-clip", seed=1)  # same architecture, new weights
    cfg = config.load(
        RecaptionConfig,
        "recaption",
        "default",
        [
            *caption_overrides(tiny_vlm),
            *ALIGN,
            f"captioning.alignment.clip_model={TINY_CLIP_NAME}",
            f"captioning.alignment.clip_pretrained={other['clip_pretrained']}",
            f"captioning.alignment.clip_model_config={other['clip_model_config']}",
            "captioning.alignment.device=cpu",
            "input.shards_per_task=4",  # every sample in one task: all three get a baseline
            "shards.keep_dropped=true",  # recaption keeps a dropped clip dropped
        ],
    )
    before = {**_records(out), **_dropped(out)}
    run = run_recaption([str(out), str(out / "dropped")], str(tmp_path / "re"), cfg, log=lambda _: None)
    after = {**_records(tmp_path / "re"), **_dropped(tmp_path / "re")}
    assert set(after) == set(before) and run["counts"]["captioned"] == 3
    towers = Towers(_clip_cfg(other))
    videos = {k: s["mp4"] for k, s in shard_samples(OutputLayout(str(out))).items()}
    videos |= {s["__key__"]: s["mp4"] for p in (out / "dropped").glob("*.tar") for s in iter_samples(str(p))}
    for key, record in after.items():
        new, old = record["caption_metrics"]["alignment"], before[key]["caption_metrics"]["alignment"]
        assert new["summary"] != pytest.approx(old["summary"], abs=1e-6)  # another CLIP's numbers
        prepared = prepare_clip(key, videos[key], cfg.captioning.frames)
        (clip_frames,) = alignment_frames([prepared], cfg.captioning.alignment).clips
        expected = towers.clip(clip_frames.frames) @ towers.text(record["caption"]["summary"])
        assert new["summary"] == pytest.approx(float(expected), abs=1e-5)
        assert new["baseline"] is not None and new["margin"] == pytest.approx(
            new["summary"] - new["baseline"]
        )
        assert new["baseline_clip"] in after and new["baseline_clip"] != key
        assert record["caption_prev"] == before[key]["caption"]
    layout = OutputLayout(str(tmp_path / "re"))
    rows = layout.read_manifest(layout.clips_manifest).to_pylist()
    for row in rows:
        assert row["caption_metrics"]["alignment"] == after[row["key"]]["caption_metrics"]["alignment"]


def test_the_actor_passes_other_columns_through(tiny_aesthetic, frames):
    from captioning.alignment_stage import AlignmentActor

    actor = AlignmentActor(AlignmentConfig(enabled=True), _clip_cfg(tiny_aesthetic))
    batch = {
        "task_id": [7],
        "outcomes": [pickle.dumps(_outcomes(CAPTIONS))],
        "alignment_frames": [pickle.dumps(frames)],
        "caption_stats": [b"x"],
    }
    out = actor(batch)
    assert set(out) == {"task_id", "outcomes", "caption_stats", "alignment_stats"}
    outcomes = pickle.loads(out["outcomes"][0])
    assert all("alignment" in o.metrics for o in outcomes)
    assert pickle.loads(out["alignment_stats"][0])["aligned"] == 3
