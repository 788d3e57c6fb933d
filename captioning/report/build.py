"""Build `OUT/report/`: measure the run, draw the figures and contact sheets, write report.json and the page.

`measure` computes every number (and is what `--compare` runs on the other run too); `build_report`
adds the pictures and writes the files. The report is built in a local temporary directory and then
copied into OUT/report/ (which may be an object store), replacing the previous report.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import tempfile
from datetime import UTC, datetime

import numpy as np

from captioning.report import plots
from captioning.report.browser import write_browser
from captioning.report.clip_frames import iter_clip_frames
from captioning.report.collect import Collected, RunOutputs, collect, open_run
from captioning.report.config import ReportConfig
from curation import storage

SCHEMA_VERSION = 1
GALLERIES = ("worst_aligned", "random", "longest_captions")


def _run_summary(run: RunOutputs) -> dict:
    info = run.run
    captioning = run.config.get("captioning") or {}
    return {
        "output": run.layout.root,
        "job": run.job,
        "models": run.models,
        "finished": bool(info),
        "started_at": info.get("started_at"),
        "finished_at": info.get("finished_at"),
        "wall_s": (info.get("timings") or {}).get("wall_s"),
        "config_fingerprint": info.get("config_fingerprint"),
        "caption_model": (captioning.get("vlm") or {}).get("model") if captioning.get("enabled") else None,
        "prompt_id": captioning.get("prompt_id") if captioning.get("enabled") else None,
    }


def _load_aligner(clip_cfg, cfg: ReportConfig):
    """(aligner, None) or (None, why alignment is not computed)."""
    if not cfg.alignment:
        return None, "off (report.alignment=false)"
    from curation.scoring.aesthetic import MissingModelError

    try:
        from captioning.alignment import CaptionAligner

        return CaptionAligner(clip_cfg), None
    except MissingModelError as exc:
        return None, (
            f"the CLIP model {clip_cfg.clip_model}/{clip_cfg.clip_pretrained} is not available ({exc}); "
            "set report.clip_model and report.clip_pretrained (or the run's scoring.aesthetic model) to one "
            "on this machine and run `reelmill report OUT` again"
        )


def _gallery_key(clip: dict) -> float:
    a = clip.get("alignment") or {}
    value = a.get("segment_mean") if a.get("segment_mean") is not None else a.get("summary")
    return value if value is not None else float("inf")


def measure(run: RunOutputs, cfg: ReportConfig, log=print, keep_frames: bool = True, load_aligner=None):
    """Every number of the report for one run, and the frames of the clips its galleries show.

    `load_aligner` returns (CaptionAligner, None) or (None, why not), loaded once: two compared runs
    share one model. By default it loads `cfg.clip_config` of this run when a clip needs it.

    Returns (report dict without pictures, key -> ClipFrames of the gallery clips).
    """
    log(f"reelmill report: reading the manifests of {run.layout.root}")
    found: Collected = collect(run, cfg, log)
    pool, longest = found.pool, found.longest
    rng = random.Random(f"{cfg.seed}:gallery")
    random_keys = {c["key"] for c in rng.sample(pool, min(cfg.examples, len(pool)))}
    load_aligner = load_aligner or (lambda: _load_aligner(cfg.clip_config(run.config), cfg))
    aligner, why_not = load_aligner() if pool else (None, "no captioned clips in the shards")
    # with an aligner every sampled clip is decoded and embedded, one at a time; frames are kept only
    # for the clips a gallery shows (the worst aligned ones are decoded again once they are known)
    camera_clips = [c for clips in found.camera["examples"].values() for c in clips]
    shown = random_keys | {c["key"] for c in [*longest, *camera_clips]} if keep_frames else set()
    to_decode = {c["key"]: c for c in pool if aligner is not None or c["key"] in shown}
    to_decode.update({c["key"]: c for c in [*longest, *camera_clips] if c["key"] in shown})
    frames, embeddings, failed = {}, {}, {}
    pool_keys = {c["key"] for c in pool}
    for key, clip_frames, problem in iter_clip_frames(list(to_decode.values()), run.shard_uri, cfg, log):
        if clip_frames is None:
            failed[key] = problem
            continue
        if aligner is not None and key in pool_keys:
            embedding = aligner.embed_frames(clip_frames.frames)
            embeddings[key] = (clip_frames.timestamps, clip_frames.duration_s, embedding)
        if key in shown:
            frames[key] = clip_frames

    alignment: dict = {
        "status": "skipped" if aligner is None else "ok",
        "reason": why_not,
        "sample": {
            "captioned_clips": found.pool_of,
            "drawn": len(pool),
            "max_clips": cfg.max_clips,
            "aligned": 0,
            "not_decoded": failed,
        },
    }
    per_clip: dict[str, dict] = {}
    if aligner is not None:
        from captioning.alignment import ClipFrames, alignment_report

        aligned = [c for c in pool if c["key"] in embeddings]
        log(
            f"reelmill report: scoring caption-video alignment of {len(aligned)} clips with {aligner.model_name}"
        )
        result = alignment_report(
            [ClipFrames(c["key"], np.zeros((0, 1, 1, 3), np.uint8), *embeddings[c["key"]][:2]) for c in aligned],
            [c["caption"] for c in aligned],
            aligner,
            seed=cfg.seed,
            frame_embeddings=[embeddings[c["key"]][2] for c in aligned],
        )  # fmt: skip
        per_clip = {row["key"]: row for row in result.pop("per_clip")}
        alignment.update(result)
        alignment["sample"]["aligned"] = len(aligned)
        alignment["status"] = "ok" if aligned else "skipped"
        if not aligned:
            alignment["reason"] = "no sampled clip could be decoded"

    def with_alignment(clip: dict) -> dict:
        return {**clip, "alignment": per_clip.get(clip["key"]), "not_decoded": failed.get(clip["key"])}

    ranked = sorted(
        (with_alignment(c) for c in pool if c["key"] in per_clip), key=lambda c: (_gallery_key(c), c["key"])
    )
    worst = ranked[: cfg.examples]
    if keep_frames:
        again = [c for c in worst if c["key"] not in frames]
        for key, clip_frames, _ in iter_clip_frames(again, run.shard_uri, cfg, log):
            if clip_frames is not None:
                frames[key] = clip_frames
    examples = {
        "worst_aligned": worst,
        "random": [with_alignment(c) for c in pool if c["key"] in random_keys],
        "longest_captions": [with_alignment(c) for c in longest],
    }
    report = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": _run_summary(run),
        "settings": {k: v for k, v in vars(cfg).items()},
        "funnel": found.funnel,
        "scores": found.scores,
        "resolutions": found.resolutions,
        "captions": found.captions,
        "alignment": alignment,
        "camera": found.camera,
        "dedup": found.dedup,
        "examples": examples,
    }
    return report, frames


def _sheet_name(key: str) -> str:
    return "sheets/" + hashlib.sha1(key.encode()).hexdigest()[:16] + ".jpg"


def draw(report: dict, frames: dict, directory: str, cfg: ReportConfig) -> None:
    """Write every figure and contact sheet under `directory`; record their paths in `report`."""
    figures: dict[str, str] = {}

    def path(name: str) -> str:
        figures[name] = f"plots/{name}.png"
        return os.path.join(directory, figures[name])

    funnel = report["funnel"]
    funnel["plot"] = plots.funnel_chart(path("funnel"), funnel["panels"])
    if funnel["drops"]:
        plots.bar_chart(path("drops"), list(funnel["drops"].items()), "Clips dropped, by reason", "clips")
    if funnel["job"] == "curate" and funnel["probe_errors"]:
        plots.bar_chart(
            path("probe_errors"),
            list(funnel["probe_errors"].items()),
            "Input videos rejected, by error",
            "videos",
        )
    if report["scores"]:
        panels = [
            {"title": name, "xlabel": plots.AXIS_LABELS.get(name, name), **entry}
            for name, entry in report["scores"].items()
        ]
        drawn = plots.histogram_grid(path("scores"), panels)["panels"]
        for name, entry in report["scores"].items():
            entry["plot_lines"] = drawn[name]["thresholds"]
            entry["plot"] = drawn[name]
    captions = report["captions"]
    if captions["counts"]["captioned"]:
        panels = [
            {**d, "title": name.replace("_", " ") + ("" if d["exact_percentiles"] else f" (a sample of {sum(d['histogram']['counts']):,})"),
             "xlabel": plots.AXIS_LABELS.get(name, name),
             "ylabel": "segments" if name == "words_per_segment" else "captions"}
            for name, d in captions["distributions"].items()
        ]  # fmt: skip
        drawn = plots.histogram_grid(path("captions"), panels)["panels"]
        for name, panel in zip(captions["distributions"], panels, strict=True):
            captions["distributions"][name]["plot"] = drawn[panel["title"]]
        failures = [(k, v) for k, v in captions["counts"]["failures"].items() if v]
        if failures:
            plots.bar_chart(path("caption_failures"), failures, "Caption failures, by reason", "clips")
        openings = [(o["opening"], o["count"]) for o in captions["boilerplate"]["top_openings"][:12]]
        plots.bar_chart(
            path("openings"), openings, "Most frequent summary openings (first 3 words)", "captions"
        )
    alignment = report["alignment"]
    if alignment["status"] == "ok":
        for part in ("segments", "summary"):
            d = alignment["distributions"][part]
            plots.baseline_histogram(
                path(f"alignment_{part}"),
                d["own"],
                d["shuffled"],
                f"{part}: own clip vs shuffled",
                "segments" if part == "segments" else "summaries",
            )
    for gallery in [*report["examples"].values(), *report["camera"]["examples"].values()]:
        for clip in gallery:
            clip_frames = frames.get(clip["key"])
            if clip_frames is None:
                continue
            clip["sheet"] = _sheet_name(clip["key"])
            clip["sheet_times"] = plots.contact_sheet(
                os.path.join(directory, clip["sheet"]),
                clip_frames.frames,
                clip_frames.timestamps,
                cfg.sheet_frames,
            )
    report["plots"] = figures


def build_report(root: str, cfg: ReportConfig, compare: str | None = None, log=print) -> dict:
    """Build OUT/report/ (index.html, report.json, plots/, sheets/) for the run in `root`; returns report.json."""
    from captioning.report.page import render_page

    run = open_run(root)
    clip_cfg = cfg.clip_config(run.config)
    load_aligner = functools.cache(lambda: _load_aligner(clip_cfg, cfg))
    report, frames = measure(run, cfg, log, load_aligner=load_aligner)
    if compare is not None:
        from captioning.report.compare import compare_runs

        other = open_run(compare)
        other_report, _ = measure(other, cfg, log, keep_frames=False, load_aligner=load_aligner)
        report["compare"] = compare_runs(run, report, other, other_report, cfg, log)
    with tempfile.TemporaryDirectory(prefix="reelmill-report-") as tmp:
        draw(report, frames, tmp, cfg)
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
        with open(os.path.join(tmp, "index.html"), "w") as f:
            f.write(render_page(report))
        write_browser(run, cfg, tmp, log)
        _publish(tmp, run.layout)
    log(f"reelmill report: {storage.join(run.layout.report, 'index.html')}")
    return report


def _publish(local_dir: str, layout) -> None:
    """Replace the report under OUT/report/ (local or remote) with the files of `local_dir`: the previous
    report's own files go (`OutputLayout.OWNED`), anything else a user keeps in report/ stays."""
    for uri in layout.owned_files(under="report"):
        storage.delete(uri)
    target = layout.report
    for folder, _, names in os.walk(local_dir):
        for name in names:
            local = os.path.join(folder, name)
            with open(local, "rb") as f:
                storage.write_bytes(storage.join(target, os.path.relpath(local, local_dir)), f.read())
