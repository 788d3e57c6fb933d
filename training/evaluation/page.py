"""`reelmill eval`'s page: the samples playing beside their prompts, and the metrics against the real clips.

One static HTML file in the eval directory, in the quality report's style (its CSS and table helpers,
`captioning.report.page`), with relative links only, so it opens from disk (file://) and from any static
server. No scripts: the videos are plain `<video>` elements.
"""

from __future__ import annotations

from captioning.report.page import STYLE, esc, fmt, section, table

ABOUT = {
    "fvd": "Fréchet Video Distance to the real clips in the feature network's space; lower is better.",
    "clipsim": "mean text-frame cosine similarity of CLIP (real row: the clips against their own captions).",
    "subject_consistency": "DINOv2 CLS cosine of each frame to the first and the previous one; 1 is still.",
    "frame_diff": "mean absolute change between consecutive frames (share of 0-255); 0 is frozen.",
    "temporal_flickering": "1 - frame_diff (VBench); 1 is perfectly steady.",
    "flicker": "share of pixels whose change reverses sign from one frame to the next; 1 is alternating frames.",
    "motion": "the curation motion scorer (optical flow, share of the diagonal per frame); ~0 is frozen.",
}

VIDEO_STYLE = """
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; }
.sample { border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px; }
.sample video { width: 100%; height: auto; background: #000; image-rendering: pixelated; border-radius: 4px; }
.metrics td:last-child, .metrics th:last-child { text-align: left; }
.sample p { margin: 6px 0; font-size: 14px; white-space: pre-wrap; }
"""


def _metrics(result: dict) -> str:
    samples, real = result["metrics"]["samples"], result["metrics"]["real"]
    rows = []
    for name in result["metric_order"]:
        why = result["skipped_metrics"].get(name)
        if why:
            rows.append([f"<code>{esc(name)}</code>", "&ndash;", "&ndash;", f"not computed: {esc(why)}"])
        else:
            rows.append(
                [
                    f"<code>{esc(name)}</code>",
                    fmt(samples.get(name)),
                    fmt(real.get(name)),
                    esc(ABOUT.get(name, "")),
                ]
            )
    out = f'<div class="metrics">{table(["metric", "samples", "real clips", "what it says"], rows)}</div>'
    network = result.get("feature_network")
    if network:
        out += (
            f'<p class="note">FVD features: <code>{esc(network["path"])}</code> (sha256 '
            f"<code>{esc(network['sha256'])}</code>, {esc(network['call'])} call). FVD is comparable only "
            "between evaluations with the same network, clip size and number of videos.</p>"
        )
    c = result["counts"]
    out += (
        f'<p class="note">{fmt(c["samples"])} samples of {fmt(c["prompts"])} prompts '
        f"({fmt(c['failed_samples'])} failed), {fmt(c['real'])} real clips "
        f"(skipped: {esc(', '.join(f'{k} {v}' for k, v in c['real_skipped'].items() if v) or 'none')}).</p>"
    )
    return out


def _samples(result: dict) -> str:
    if not result["samples"]:
        return "<p>No sample was written (every sampling batch failed; see eval.json's errors).</p>"
    cards = []
    for row in result["samples"]:
        values = ", ".join(f"{esc(k)} {fmt(v, 3)}" for k, v in row.get("metrics", {}).items())
        cards.append(
            '<div class="sample">'
            f'<video src="{esc(row["video"])}" controls muted loop autoplay playsinline preload="auto"></video>'
            f'<p>{esc(row["prompt"])}</p><p class="note">seed {fmt(row["seed"])} &middot; {values}</p></div>'
        )
    return f'<div class="samples">{"".join(cards)}</div>'


def render_page(result: dict) -> str:
    banner = ""
    if result.get("models") == "random-weights":
        banner = (
            '<p class="warn"><b>models: random-weights</b>. Tiny random-weight stand-ins ran in place of missing '
            "model weights: these samples and numbers describe nothing.</p>"
        )
    s = result["sampling"]
    clip = result["clip"]
    facts = " &middot; ".join(
        [
            f"checkpoint <code>{esc(result['ckpt'])}</code>",
            f"{fmt(clip['num_frames'])} frames {fmt(clip['width'])}x{fmt(clip['height'])} at {fmt(clip['fps'])} fps",
            f"{fmt(s['steps'])} steps, guidance {fmt(s['guidance'])}, seed {fmt(s['seed'])}",
            f"finished {esc(result['finished_at'])}",
            '<a href="eval.json">eval.json</a>',
        ]
    )
    body = section("metrics", "Metrics", _metrics(result)) + section("samples", "Samples", _samples(result))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>reelmill eval: {esc(result['ckpt'])}</title><style>{STYLE}{VIDEO_STYLE}</style></head><body><main>"
        f"<h1>reelmill eval</h1><p>{facts}</p>{banner}\n{body}\n</main></body></html>\n"
    )


def write_page(result: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_page(result))
