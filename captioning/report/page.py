"""The report as one static HTML page (images beside it, relative links), from report.json's content.

No scripts and no external resources: it opens from disk and from any static file server, and prints.
Every section is a `<section id>` with an `<h2>`, listed in the table of contents; a section with
nothing to show says why instead of staying empty.
"""

from __future__ import annotations

import html
import shlex

from captioning.report.plots import format_hours

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 64px; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 20px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
nav ol { columns: 2; margin: 8px 0 0; } nav { background: #f6f7f9; padding: 10px 16px; border-radius: 6px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
td, th { border-bottom: 1px solid #e3e3e3; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; height: auto; display: block; margin: 6px 0 14px; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 8px 12px; border-radius: 6px; }
.note { color: #555; font-size: 14px; }
.row { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
.card { display: grid; grid-template-columns: minmax(300px, 560px) 1fr; gap: 16px; border: 1px solid #e3e3e3;
        border-radius: 6px; padding: 12px; margin: 12px 0; }
.card img { max-width: 100%; height: auto; }
.card ul { padding-left: 18px; margin: 4px 0; } code { font-size: 13px; background: #f3f3f3; padding: 0 3px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
a.browse { display: inline-block; margin: 6px 0 10px; padding: 8px 16px; border-radius: 6px; background: #4c72b0;
           color: #fff; font-weight: 600; text-decoration: none; } a.browse:hover { background: #3b5b93; }
@media (max-width: 800px) { .card, .pair { grid-template-columns: 1fr; } nav ol { columns: 1; } }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A number as the page shows it (report.json keeps it exact); None as a dash."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}g}"
    return esc(value)


def pct(value) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}%"


def hours(value) -> str:
    """An amount of video, rounded to what a reader takes in (`plots.format_hours`)."""
    return "&ndash;" if value is None else esc(format_hours(value))


def table(headers: list[str], rows: list[list], numeric_from: int = 1) -> str:
    """Cells are HTML already (use `fmt`/`esc`); columns from `numeric_from` on are right-aligned."""
    head = "".join(
        f'<th class="{"n" if i >= numeric_from else ""}">{esc(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"n" if i >= numeric_from else ""}">{c}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(report: dict, name: str, alt: str) -> str:
    src = report.get("plots", {}).get(name)
    return f'<img class="plot" src="{esc(src)}" alt="{esc(alt)}">' if src else ""


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def _funnel(report: dict) -> str:
    f = report["funnel"]
    rows = [[esc(stage), fmt(n)] for stage, n in f["stages"]]
    if f["job"] == "curate":
        rows += [
            ["video in (probed ok)", hours(f["hours_in"])],
            ["video in candidate clips", hours(f["hours_candidates"])],
            ["video in kept clips", hours(f["hours_kept"])],
        ]
        if f.get("transitions"):
            kinds = ", ".join(f"{esc(kind)} {fmt(n)}" for kind, n in f["transitions"].items())
            rows.append(["transitions between shots (not clips)", kinds])
    else:
        rows += [
            ["unreadable input shards", fmt(f["shard_errors"])],
            ["video in written clips", hours(f["hours_kept"])],
        ]
    dedup = report.get("dedup")
    if dedup:
        rows += [
            ["kept after dedup", fmt(dedup["kept_after_dedup"])],
            ["video kept after dedup", hours(dedup["hours_after_dedup"])],
        ]
    out = (
        '<p class="note">One chart per unit, stages in pipeline order; each count bar also gives its share of '
        "the chart's first stage.</p>"
    )
    out += f'<div class="row">{table(["stage", "amount"], rows)}{image(report, "funnel", "funnel")}</div>'
    base = max(1, f["candidate_clips" if f["job"] == "curate" else "selected"])
    drops = [[f"<code>{esc(r)}</code>", fmt(n), pct(n / base)] for r, n in f["drops"].items()]
    out += "<h3>Drops by reason</h3>"
    listed = table(["reason", "clips", "share"], drops) if drops else "<p>No clip was dropped.</p>"
    out += f'<div class="row">{listed}{image(report, "drops", "drops by reason") if drops else ""}</div>'
    if f.get("would_drop") is not None:
        out += "<h3>What filters.rules would drop (score-only run)</h3>"
        would = [[f"<code>{esc(r)}</code>", fmt(n), pct(n / base)] for r, n in f["would_drop"].items()]
        out += (
            '<p class="note">This run kept every clip that reached the filters (<code>filters.mode=score-only</code>); '
            "these clips fail a rule, by the first rule they fail.</p>"
            + (
                table(["rule", "clips", "share"], would)
                if would
                else "<p>Every kept clip passes every rule.</p>"
            )
        )
    if f["job"] == "curate":
        out += "<h3>Input videos rejected</h3>"
        errors = [[f"<code>{esc(code)}</code>", fmt(n)] for code, n in f["probe_errors"].items()]
        listed = table(["error", "videos"], errors) if errors else "<p>Every input video probed fine.</p>"
        out += f'<div class="row">{listed}{image(report, "probe_errors", "probe errors") if errors else ""}</div>'
    return out


def _scores(report: dict) -> str:
    scores = report["scores"]
    if not scores:
        return "<p>No clip has a score (no clip was written and scored).</p>"
    score_only = any("would_drop" in e["histogram"].get("series", {}) for e in scores.values())
    out = (
        '<p class="note">Histograms over every candidate clip that has the score, kept and dropped clips stacked '
        + (
            "(and, in amber, the clips this score-only run kept that its rules would drop) "
            if score_only
            else ""
        )
        + "with exact counts; a score spread over more than two decades is drawn on a log axis. Red dashed lines "
        "are the configured thresholds (<code>filters.rules</code>; <code>clips.min_clip_s</code> for durations); "
        "the table gives the share of clips beyond each. A clip beyond two thresholds is dropped by the first "
        "rule only. Every clip, with its scores, is in the "
        '<a href="clips.html">clip browser</a>.</p>'
    )
    out += image(report, "scores", "score histograms with thresholds")
    rows = []
    for name, e in scores.items():
        marks = "<br>".join(
            f"{t['side']} {fmt(t['value'])}: {pct(t['share_beyond'])} {'below' if t['side'] == 'min' else 'above'}"
            f" ({fmt(t['beyond'])} clips), dropped by this rule: {fmt(t['dropped_by_rule'])}"
            + (f", would drop: {fmt(t['would_drop_by_rule'])}" if "would_drop_by_rule" in t else "")
            for t in e["thresholds"]
        )
        rows.append([f"<code>{esc(name)}</code>", fmt(e["count"]), fmt(e["mean"]), fmt(e["p5"]), fmt(e["p50"]),
                     fmt(e["p95"]), fmt(e["min"]), fmt(e["max"]), marks or "&ndash;"])  # fmt: skip
    out += table(["score", "clips", "mean", "p5", "median", "p95", "min", "max", "thresholds"], rows)
    if report["resolutions"]:
        out += "<h3>Resolutions of kept clips</h3>"
        out += table(
            ["width x height", "clips"],
            [[esc(r["resolution"]), fmt(r["clips"])] for r in report["resolutions"]],
        )
    return out


def _captions(report: dict) -> str:
    c = report["captions"]
    counts = c["counts"]
    if not counts["captioned"]:
        reason = (
            "captioning was off for this run"
            if report["run"].get("caption_model") is None
            else "no clip has a caption"
        )
        out = f"<p>No captions: {reason}.</p>"
        if counts["caption_failed"]:
            out += table(["failure", "clips"], [[esc(k), fmt(v)] for k, v in counts["failures"].items() if v])
        return out
    d = c["distributions"]
    text, rep, boiler, dup = c["text"], c["repetition"], c["boilerplate"], c["duplicates"]
    rows = [
        ["captioned clips", fmt(counts["captioned"])],
        ["kept clips with a caption", pct(counts["captioned_share_of_kept"])],
        ["caption failures", fmt(counts["caption_failed"])],
        ["words per caption (mean / median)", f"{fmt(d['words_per_caption']['mean'])} / {fmt(d['words_per_caption']['p50'])}"],
        ["words per segment (mean / median)", f"{fmt(d['words_per_segment']['mean'])} / {fmt(d['words_per_segment']['p50'])}"],
        ["segments per clip (mean)", fmt(d["segments_per_clip"]["mean"])],
        ["segments per second (mean)", fmt(d["segments_per_second"]["mean"])],
        ["coverage of the clip by segments (mean)", pct(d["coverage"]["mean"])],
        ["vocabulary size", fmt(text["vocabulary_size"])],
        ["distinct-1 (vocabulary / words)", fmt(text["distinct_1"])],
        ["distinct-2 (distinct bigrams / bigrams)", fmt(text["distinct_2"])],
        ["repetition rate (a word 3-gram repeated within one text)", pct(rep["rate"])],
        ["boilerplate openings (\u201cThe video shows \u2026\u201d)", pct(boiler["share"])],
        ["exact duplicate captions: clips in groups / groups", f"{fmt(dup['exact']['clips'])} / {fmt(dup['exact']['groups'])}"],
        [f"near-duplicate pairs (Jaccard \u2265 {dup['near']['threshold']:g}) / clips involved",
         f"{fmt(dup['near']['pairs'])} / {fmt(dup['near']['clips'])}"],
    ]  # fmt: skip
    out = table(["measure", "value"], rows)
    out += image(report, "captions", "caption length, segments and coverage histograms")
    failures = [[f"<code>{esc(k)}</code>", fmt(v)] for k, v in counts["failures"].items() if v]
    out += "<h3>Caption failures by reason</h3>"
    out += (
        table(["reason", "clips"], failures) + image(report, "caption_failures", "caption failures")
        if failures
        else "<p>No caption failed.</p>"
    )
    out += "<h3>Openings</h3>"
    phrases = [[esc(p), fmt(n)] for p, n in boiler["by_phrase"].items()]
    if phrases:
        out += table(["boilerplate phrase", "captions"], phrases)
    out += image(report, "openings", "most frequent openings")
    out += table(
        ["summary opening", "captions"],
        [[esc(o["opening"]), fmt(o["count"])] for o in boiler["top_openings"][:10]],
    )
    out += "<h3>Duplicates</h3>"
    if dup["unchecked_clips"]:
        out += (
            f'<p class="note">Looked for among the first {fmt(dup["checked_clips"])} captioned clips; '
            f"{fmt(dup['unchecked_clips'])} later ones were not checked (<code>report.duplicate_clips</code>).</p>"
        )
    groups = [
        [fmt(g["count"]), ", ".join(f"<code>{esc(k)}</code>" for k in g["clip_ids"])]
        for g in dup["exact"]["top_groups"]
    ]
    out += (
        table(["clips", "clip ids (first ones)"], groups, numeric_from=2)
        if groups
        else "<p>No two clips share a caption.</p>"
    )
    near = [
        [fmt(e["jaccard"]), ", ".join(f"<code>{esc(k)}</code>" for k in e["clip_ids"])]
        for e in dup["near"]["examples"]
    ]
    if near:
        out += table(["Jaccard", "near-duplicate pair"], near, numeric_from=2)
    return out


def _alignment(report: dict) -> str:
    a = report["alignment"]
    s = a["sample"]
    sample = (
        f'<p class="note">Sample: {fmt(s["aligned"])} clips aligned, drawn uniformly from '
        f"{fmt(s['captioned_clips'])} captioned clips in the shards (<code>report.max_clips</code> = {fmt(s['max_clips'])})"
        + (f"; {len(s['not_decoded'])} could not be decoded" if s["not_decoded"] else "")
        + ".</p>"
    )
    if a["status"] != "ok":
        return f'<p class="warn">Alignment not computed: {esc(a["reason"])}.</p>' + sample
    rows = [
        [esc(part), fmt(a[part]["mean"]), fmt(a[part]["shuffled_mean"]), fmt(a[part]["margin"])]
        for part in ("summary", "segments")
    ]
    out = (
        f'<p class="note">CLIP model <code>{esc(a["model"])}</code>. A segment is scored against the mean embedding of '
        "the frames inside its time span, the summary against all frames. The baseline pairs every caption with "
        "another clip (a fixed derangement, segment times rescaled to that clip); the margin is what the caption "
        "knows about its own clip.</p>" + sample
    )
    out += table(["text", "own clip", "shuffled pairs", "margin"], rows)
    t = a["temporal"]
    out += (
        f"<p>Temporal check: {pct(t['own_span_best_share'])} of {fmt(t['segments_checked'])} segments (in clips with "
        "two or more) match their own span better than the clip's other spans.</p>"
    )
    out += image(report, "alignment_segments", "segment alignment vs shuffled") + image(
        report, "alignment_summary", "summary alignment vs shuffled"
    )
    return out


def _camera_line(camera: dict | None) -> str:
    """A clip's camera label and, when it changes within the clip, its windows' labels in order."""
    if not camera:
        return ""
    line = f"<code>{esc(camera['label'])}</code>"
    windows = camera.get("windows") or []
    if len({w["label"] for w in windows}) > 1:
        line += (
            " (" + ", ".join(f"{w['start_s']:.0f}-{w['end_s']:.0f}s {esc(w['label'])}" for w in windows) + ")"
        )
    return line


def _clip_card(clip: dict, shard_prefix: str = "../shards/") -> str:
    a = clip.get("alignment") or {}
    seg_scores = a.get("segments") or []
    segments = "".join(
        f"<li><code>[{seg['start_s']:.1f}-{seg['end_s']:.1f}s]</code> {esc(seg['text'])}"
        + (f' <span class="note">(align {fmt(seg_scores[i], 3)})</span>' if i < len(seg_scores) and seg_scores[i] is not None else "")
        + "</li>"
        for i, seg in enumerate(clip["caption"]["segments"])
    )  # fmt: skip
    scores = ", ".join(f"{esc(k)} {fmt(v, 3)}" for k, v in clip["scores"].items()) or "none"
    camera = _camera_line(clip.get("camera"))
    if clip.get("sheet"):
        picture = f'<img src="{esc(clip["sheet"])}" alt="contact sheet of {esc(clip["key"])}">'
    else:
        picture = f'<p class="warn">No frames: {esc(clip.get("not_decoded") or "not decoded")}</p>'
    shard = clip["shard"]
    # shell-quoted: a key or shard name from a foreign shard may hold anything a shell would run
    members = " ".join(shlex.quote(f"{clip['key']}.{ext}") for ext in ("mp4", "json", "txt"))
    return (
        f'<div class="card"><div>{picture}</div><div>'
        f"<div><b>{esc(clip['key'])}</b> &middot; {fmt(clip['duration_s'], 3)} s &middot; {fmt(clip['words'])} words"
        + (f" &middot; summary align {fmt(a.get('summary'), 3)}, segment mean {fmt(a.get('segment_mean'), 3)}" if a else "")
        + "</div>"
        f"<p>{esc(clip['caption']['summary'])}</p><ul>{segments}</ul>"
        f'<div class="note">scores: {scores}</div>'
        + (f'<div class="note">camera: {camera}</div>' if camera else "")
        + f'<div class="note">shard <a href="{esc(shard_prefix + shard)}">{esc(shard)}</a>, key <code>{esc(clip["key"])}</code>'
        + (f", source {esc(clip['source'])} at {fmt(clip['source_start_s'], 4)} s" if clip.get("source") else "")
        + f"<br>pull it: <code>tar -xf {esc(shlex.quote('shards/' + shard))} {esc(members)}</code></div>"
        "</div></div>"
    )  # fmt: skip


def _camera(report: dict) -> str:
    cam = report.get("camera") or {}
    if not cam.get("labels"):
        return (
            "<p>No clip has a camera label (<code>scoring.camera.enabled</code> and "
            "<code>scoring.motion.enabled</code> give every scored clip one).</p>"
        )
    out = (
        '<p class="note">Each scored clip gets the label most of its frame pairs agree on, from a similarity '
        "transform fitted to the motion scorer's flow (<code>scoring.camera</code>); "
        "<code>shake</code> is motion that goes back and forth, <code>complex</code> is no majority or flow the "
        "transform does not explain. Mean numbers per label, per step between sampled frames: pan and tilt "
        "are the picture's shift in reference pixels (positive: it slides right, down; a camera panning right "
        "makes it slide left), zoom its relative growth, rotation in radians, residual the share of the flow "
        "the camera's motion does not explain. "
        f"{fmt(cam['labelled'])} clips labelled, {fmt(cam['unlabelled'])} without a label (not scored).</p>"
    )
    rows = [
        [f"<code>{esc(r['label'])}</code>", fmt(r["clips"]), pct(r["share"]), fmt(r["kept"]), hours(r["hours"]),
         hours(r["hours_kept"]), fmt(r["mean_pan_px"], 3), fmt(r["mean_tilt_px"], 3), fmt(r["mean_zoom"], 3),
         fmt(r["mean_rotation"], 3), fmt(r["mean_residual"], 3)]
        for r in cam["labels"]
    ]  # fmt: skip
    out += table(
        ["label", "clips", "share", "kept", "video", "video kept", "pan px", "tilt px", "zoom", "rotation",
         "residual"],
        rows,
    )  # fmt: skip
    for label, clips in cam["examples"].items():
        out += f"<h3>Examples: <code>{esc(label)}</code></h3>" + "".join(_clip_card(c) for c in clips)
    return out


def _dedup(report: dict) -> str:
    d = report["dedup"]
    out = (
        '<p class="note">From <code>manifest/dedup</code>, written by <code>reelmill dedup</code>: near-duplicate '
        "kept clips by CLIP embedding; <code>dedup/keep.txt</code> lists the clips to train on (every clip not "
        "marked a duplicate).</p>"
    )
    rows = [
        ["kept clips of the run", fmt(d["kept_clips"])],
        ["clips dedup looked at", fmt(d["checked_clips"])],
        ["marked duplicate", f"{fmt(d['duplicates'])} ({pct(d['duplicates'] / max(1, d['checked_clips']))})"],
        ["kept after dedup", fmt(d["kept_after_dedup"])],
        ["video in duplicates", hours(d["hours_duplicates"])],
        ["video kept after dedup", hours(d["hours_after_dedup"])],
    ]
    rows += [[f"not checked: <code>{esc(status)}</code>", fmt(n)] for status, n in d["not_checked"].items()]
    out += table(["", "amount"], rows)
    if d["borderline_pairs"]:
        out += '<h3>Least similar duplicates</h3><p class="note">The pairs nearest the threshold: where a wrong call would be.</p>'
        out += table(
            ["duplicate", "of kept clip", "cosine"],
            [[f"<code>{esc(p['clip_id'])}</code>", f"<code>{esc(p['duplicate_of'])}</code>", fmt(p["similarity"], 4)]
             for p in d["borderline_pairs"]],
            numeric_from=2,
        )  # fmt: skip
    return out


GALLERY_TEXT = {
    "worst_aligned": ("Worst aligned clips", "Lowest mean segment alignment (summary where no segment has frames) in the alignment sample."),
    "random": ("Random clips", "Drawn uniformly from the alignment sample (seeded, the same on every rebuild)."),
    "longest_captions": ("Longest captions", "The captions with the most words in the whole run."),
}  # fmt: skip


def _gallery(report: dict, name: str) -> str:
    clips = report["examples"][name]
    title, note = GALLERY_TEXT[name]
    out = f'<p class="note">{esc(note)}</p>'
    if not clips:
        if name == "worst_aligned" and report["alignment"]["status"] != "ok":
            return out + f"<p>None: alignment was not computed ({esc(report['alignment']['reason'])}).</p>"
        return out + "<p>None: the run has no captioned clips in its shards.</p>"
    return out + "".join(_clip_card(c) for c in clips)


def _compare(report: dict) -> str:
    cmp = report["compare"]
    out = (
        f"<p>This run: <code>{esc(report['run']['output'])}</code> (captions by {esc(report['run']['caption_model'])}, "
        f"prompt {esc(report['run']['prompt_id'])}). Other run: <code>{esc(cmp['other']['output'])}</code> "
        f"(captions by {esc(cmp['other']['caption_model'])}, prompt {esc(cmp['other']['prompt_id'])}).</p>"
    )
    rows = [[esc(m["metric"]), fmt(m["this"]), fmt(m["other"]), fmt(m["delta"])] for m in cmp["metrics"]]
    out += "<h3>Every metric, both runs</h3>" + table(
        ["metric", "this run", "other run", "other - this"], rows
    )
    d = cmp["captions"]
    out += (
        f'<h3>Clips whose captions differ most</h3><p class="note">Compared on {fmt(d["compared"])} clips captioned in both '
        f"runs (a sample by key hash of at most {fmt(d['max_clips'])}; {fmt(d['only_this'])} sampled clips have no caption in the "
        f"other run). Difference: 1 - the word-level similarity ratio of the whole captions. Mean {fmt(d['mean_difference'])}, "
        f"identical {pct(d['identical_share'])}.</p>"
    )
    for pair in d["most_different"]:
        halves = "".join(
            f"<div><b>{esc(side)}</b><p>{esc(cap['summary'])}</p><ul>"
            + "".join(
                f"<li><code>[{s['start_s']:.1f}-{s['end_s']:.1f}s]</code> {esc(s['text'])}</li>"
                for s in cap["segments"]
            )
            + "</ul></div>"
            for side, cap in (("this run", pair["this"]), ("other run", pair["other"]))
        )
        out += (
            f'<div class="card" style="display:block"><div><b>{esc(pair["key"])}</b> &middot; difference '
            f'{fmt(pair["difference"], 3)} &middot; shard <a href="../shards/{esc(pair["shard"])}">{esc(pair["shard"])}</a></div>'
            f'<div class="pair">{halves}</div></div>'
        )
    if not d["most_different"]:
        out += "<p>No clip is captioned in both runs.</p>"
    return out


def render_page(report: dict) -> str:
    run = report["run"]
    sections = [
        ("funnel", "Funnel", _funnel(report)),
        ("scores", "Score distributions", _scores(report)),
        ("captions", "Caption statistics", _captions(report)),
        ("alignment", "Caption-video alignment", _alignment(report)),
        ("camera", "Camera motion", _camera(report)),
        *((("dedup", "Duplicates (reelmill dedup)", _dedup(report)),) if report.get("dedup") else ()),
        *((f"examples-{name}", GALLERY_TEXT[name][0], _gallery(report, name)) for name in report["examples"]),
    ]
    if report.get("compare"):
        sections.append(("compare", "Comparison with another run", _compare(report)))
    toc = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in sections)
    banner = ""
    if run.get("models") == "random-weights":
        banner = (
            '<p class="warn"><b>models: random-weights</b>. Tiny random-weight stand-ins ran in place of missing '
            "model weights: scores, captions and alignment here describe nothing.</p>"
        )
    if not run.get("finished"):
        banner += '<p class="warn">The run has no run.json (it did not finish); this report covers what it wrote.</p>'
    facts = " &middot; ".join(
        x for x in [
            f"job <b>{esc(run['job'])}</b>",
            f"models <b>{esc(run['models'])}</b>" if run.get("models") else "",
            f"captions by <code>{esc(run['caption_model'])}</code> ({esc(run['prompt_id'])})" if run.get("caption_model") else "",
            f"finished {esc(run['finished_at'])}" if run.get("finished_at") else "",
            f"wall {fmt(run['wall_s'], 3)} s" if run.get("wall_s") else "",
            f"report built {esc(report['generated_at'])}",
            '<a href="report.json">report.json</a>',
        ] if x
    )  # fmt: skip
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>reelmill report: {esc(run['output'])}</title><style>{STYLE}</style></head><body><main>"
        f"<h1>reelmill report</h1><p><code>{esc(run['output'])}</code></p><p>{facts}</p>{banner}"
        '<a class="browse" href="clips.html">Browse every clip (kept and dropped) &rarr;</a>\n'
        f"<nav><b>Contents</b><ol>{toc}</ol></nav>\n{body}\n"
        "</main></body></html>\n"
    )
