"""The report's figures: matplotlib PNGs (Agg, no display) and PIL contact sheets.

Each chart function writes one image file and returns what it drew, read back from the axes (bar
heights, bin edges, scales, tick values, threshold lines), so report.json and the tests can check that
the picture says what the numbers say. The rules that keep the pictures readable live here: one unit per
chart, integer ticks on count axes, a log axis for a score spread over more than two decades, legends
outside the axes, every threshold line named where it meets the plot.
"""

from __future__ import annotations

import math
import os

import numpy as np

THRESHOLD_COLOR = "#d62728"
BAR_COLOR = "#4c72b0"
BASELINE_COLOR = "#999999"
DPI = 100

SERIES = {
    # key in report.json -> (legend label, colour); stacked bottom to top in this order
    "kept": ("kept", BAR_COLOR),
    "would_drop": ("kept, but filters.rules would drop it (score-only run)", "#f0a73a"),
    "dropped": ("dropped", "#a6a6a6"),
}

AXIS_LABELS = {
    # what each score measures, in its unit (see the scorers in curation/scoring/)
    "motion": "mean optical flow per sampling step, share of the frame diagonal",
    "motion_px": "mean optical flow per sampling step (px at the scoring short side)",
    "moving_fraction": "share of pixels that move",
    "aesthetic": "LAION aesthetic score (0-10)",
    "sharpness": "Laplacian variance of luma (at the scoring short side)",
    "brightness": "mean luma (0 black, 1 white)",
    "contrast": "RMS contrast: std of luma (0-0.5)",
    "colorfulness": "colourfulness (Hasler-S\u00fcsstrunk: 15 slight, 33 moderate, 59 quite)",
    "frozen_fraction": "share of sample pairs that are the same picture",
    "text_area": "share of the frame covered by text",
    "text_boxes": "text boxes in the busiest frame",
    "content_x": "picture left edge inside bars (source px)",
    "content_y": "picture top edge inside bars (source px)",
    "content_w": "picture width inside bars (source px)",
    "content_h": "picture height inside bars (source px)",
    "duration_s": "clip duration (s)",
    "short_side_px": "short side of the written clip (px)",
    "words_per_caption": "words in summary and segments",
    "words_per_segment": "words per segment",
    "segments_per_clip": "segments per clip",
    "segments_per_second": "segments per second of clip",
    "coverage": "share of the clip covered by segments",
}


def format_hours(hours: float | None) -> str:
    """An amount of video as a reader takes it in: `20 s`, `2.5 min`, `14 min`, `2.3 h`, `1,234 h`."""
    if hours is None:
        return "\u2013"
    seconds = hours * 3600
    if seconds == 0:
        return "0 h"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if hours < 10:
        return f"{hours:.1f} h"
    return f"{hours:,.0f} h"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def _integer_ticks(axis) -> None:
    """Whole-number ticks with thousands separators: a count axis never reads 2.5 clips or 14000."""
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _ticks_shown(axis) -> list[float]:
    """The major tick values inside the axis's view (the locator also returns ones just outside)."""
    low, high = sorted(axis.get_view_interval())
    return [float(t) for t in axis.get_majorticklocs() if low - 1e-9 <= t <= high + 1e-9]


def _bar_values(container) -> list[float]:
    return [
        float(p.get_width() if container.orientation == "horizontal" else p.get_height()) for p in container
    ]


def bar_chart(path: str, items: list[tuple[str, float]], title: str, xlabel: str = "") -> dict:
    """Horizontal bars, first item on top, each labelled with its value; integer ticks for counts.

    Returns the labels and values of the bars drawn and the x tick values.
    """
    plt = _pyplot()
    items = items or [("(none)", 0)]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(items) + 1.1))
    labels = [label for label, _ in items]
    values = [value for _, value in items]
    bars = ax.barh(range(len(items)), values, color=BAR_COLOR)
    ax.set_yticks(range(len(items)), labels)
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[f"{v:,.4g}" for v in values], padding=3, fontsize=9)
    ax.set_xlim(0, max(max(values), 1) * 1.15)
    if all(float(v).is_integer() for v in values):
        _integer_ticks(ax.xaxis)
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    fig.canvas.draw()
    drawn = {"labels": labels, "values": _bar_values(bars), "ticks": _ticks_shown(ax.xaxis)}
    _save(fig, path)
    return drawn


def _hours_unit(max_hours: float) -> tuple[str, float]:
    """The unit an hours axis reads best in, and its size in hours."""
    if max_hours * 3600 < 120:
        return "seconds", 1 / 3600
    if max_hours < 2:
        return "minutes", 1 / 60
    return "hours", 1.0


def funnel_chart(path: str, panels: list[dict]) -> list[dict]:
    """The funnel as one bar chart per unit (`panels`: `title`, `unit` (`videos`, `clips`, `hours`, ...),
    `stages` [[label, value]] in pipeline order, first on top). Count bars are labelled with the count
    and its share of the panel's first stage; hours bars with `format_hours`, on an axis in seconds,
    minutes or hours, whichever the largest value reads best in.

    Returns per panel: title, unit, axis unit, labels, values drawn (in the axis unit), the bar labels
    and the tick values of its value axis.
    """
    plt = _pyplot()
    sizes = [max(1, len(p["stages"])) for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(7.5, 0.42 * sum(sizes) + 1.0 * len(panels) + 0.2),
        gridspec_kw={"height_ratios": [s + 1.6 for s in sizes]},
        squeeze=False,
    )
    drawn = []
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        labels = [label for label, _ in panel["stages"]]
        values = [float(v or 0) for _, v in panel["stages"]]
        if panel["unit"] == "hours":
            axis_unit, size = _hours_unit(max(values, default=0))
            shown = [v / size for v in values]
            texts = [format_hours(v) for v in values]
        else:
            axis_unit, shown = panel["unit"], values
            first = values[0] if values else 0
            texts = [
                f"{v:,.0f}" + (f"  ({v / first:.0%})" if i and first else "") for i, v in enumerate(values)
            ]
        bars = ax.barh(range(len(shown)), shown, color=BAR_COLOR, height=0.62)
        ax.set_yticks(range(len(shown)), labels)
        ax.invert_yaxis()
        ax.bar_label(bars, labels=texts, padding=4, fontsize=9)
        ax.set_xlim(0, (max(shown, default=0) or 1) * 1.3)  # an empty stage still gets an axis
        if panel["unit"] != "hours":
            _integer_ticks(ax.xaxis)
        else:
            from matplotlib.ticker import StrMethodFormatter

            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,g}"))
        ax.set_xlabel(axis_unit, fontsize=9)
        ax.set_title(panel["title"], loc="left", fontsize=11)
        ax.tick_params(labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout(h_pad=1.2)
    fig.canvas.draw()
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        bars = ax.containers[0]
        drawn.append({
            "title": panel["title"],
            "unit": panel["unit"],
            "axis_unit": ax.get_xlabel(),
            "labels": [t.get_text() for t in ax.get_yticklabels()],
            "values": _bar_values(bars),
            "texts": [t.get_text() for t in ax.texts],
            "ticks": _ticks_shown(ax.xaxis),
        })  # fmt: skip
    _save(fig, path)
    return drawn


def _threshold_labels(ax, lines: list[tuple[float, str]]) -> list:
    """Name each threshold line just above the axes, where no bar is; labels that would touch go up a
    row. Returns the text artists."""
    placed: list[tuple[float, int]] = []
    texts = []
    for x, text in sorted(lines):
        frac = float(ax.transAxes.inverted().transform(ax.transData.transform((x, 0)))[0])
        row = 0
        while any(abs(frac - f) < 0.3 and r == row for f, r in placed):
            row += 1
        placed.append((frac, row))
        align = "left" if frac < 0.2 else "right" if frac > 0.8 else "center"
        annotation = ax.annotate(
            text,
            xy=(frac, 1.0),
            xycoords="axes fraction",
            xytext=(0, 3 + 11 * row),
            textcoords="offset points",
            ha=align,
            va="bottom",
            fontsize=8,
            color=THRESHOLD_COLOR,
            annotation_clip=False,
        )
        texts.append(annotation)
    return texts


def _xlimits(edges: np.ndarray, thresholds: list[float], log: bool) -> tuple[float, float]:
    """The x range: every bin and every threshold, with a little room on both sides."""
    values = [float(edges[0]), float(edges[-1]), *thresholds]
    low, high = min(values), max(values)
    if log:
        span = math.log10(high / low) or 1.0
        return low / 10 ** (0.03 * span), high * 10 ** (0.03 * span)
    pad = (high - low) * 0.03 or 0.5
    return low - pad, high + pad


def _box(artist, renderer) -> list[float]:
    """Where an artist landed in the figure, in pixels: [x0, y0, x1, y1]."""
    return [float(v) for v in artist.get_window_extent(renderer).extents]


def histogram_grid(path: str, panels: list[dict], columns: int = 3) -> dict:
    """Small multiples: one histogram per panel, `title`, `xlabel`, `ylabel` (default clips) and
    `histogram` {edges, counts, and optionally `series` {kept, would_drop, dropped: counts per bin} drawn
    stacked, `scale` (linear | log) and `integer_bins`}, with optional `thresholds` [{side, value}] as red
    dashed lines, each named above its axes. Count axes have integer ticks; one legend for the series
    sits above the grid, outside every axes.

    Returns `panels`, per panel title: `thresholds` (x of the lines found on its axes), `edges`, `series`
    (bar heights read back per series), `xscale`, `count_ticks` and `value_ticks` (tick values shown),
    `axes_box` and `label_boxes` (the threshold labels) in figure pixels; and `legend_box` (or None).
    """
    plt = _pyplot()
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.2 * rows), squeeze=False)
    # room above every axes for its threshold labels: a row each at most, fewer where lines are apart
    title_pad = 8 + 11 * max((min(3, len(p.get("thresholds") or [])) for p in panels), default=0)
    used: dict[str, object] = {}
    drawn_bars: list[dict[str, object]] = []  # per panel: series key -> its BarContainer
    for ax, panel in zip(axes.flat, panels, strict=False):
        hist = panel["histogram"]
        edges = np.asarray(hist["edges"], dtype=float)
        log = hist.get("scale") == "log"
        series = hist.get("series") or ({"kept": hist["counts"]} if hist["counts"] else {})
        drawn_bars.append({})
        thresholds = [
            t for t in panel.get("thresholds") or [] if not log or t["value"] > 0
        ]  # a line at or below 0 has no place on a log axis; the table beside the plot still lists it
        if len(edges):
            if log:
                ax.set_xscale("log")
            bottom = np.zeros(len(edges) - 1)
            for key, counts in series.items():
                label, color = SERIES[key]
                counts = np.asarray(counts, dtype=float)
                bars = ax.bar(
                    edges[:-1], counts, width=np.diff(edges), bottom=bottom, align="edge", color=color,
                    edgecolor="white", linewidth=0.4, label=label,
                )  # fmt: skip
                drawn_bars[-1][key] = bars
                used.setdefault(key, bars)
                bottom += counts
            ax.set_xlim(*_xlimits(edges, [t["value"] for t in thresholds], log))
            ax.set_ylim(0, max(bottom.max(), 1) * 1.08)
        else:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="#777")
            ax.set_yticks([])
        for t in thresholds:
            ax.axvline(t["value"], color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5)
        _integer_ticks(ax.yaxis)
        if hist.get("integer_bins"):
            _integer_ticks(ax.xaxis)
        ax.set_xlabel(panel.get("xlabel") or "", fontsize=9)
        ax.set_ylabel(panel.get("ylabel") or "clips", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_title(panel["title"], loc="left", fontsize=10, fontweight="bold", pad=title_pad)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [used[key] for key in SERIES if key in used]
    labels = [SERIES[key][0] for key in SERIES if key in used]
    if any(panel.get("thresholds") for panel in panels):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5))
        labels.append("threshold (filters.rules, clips.min_clip_s)")
    legend = None
    if len(handles) > 1:
        legend = fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles),
                            frameon=False, fontsize=9)  # fmt: skip
    fig.tight_layout(h_pad=1.6, w_pad=1.4)
    labelled = []
    for ax, panel in zip(axes.flat, panels, strict=False):
        lines = [t for t in panel.get("thresholds") or [] if ax.get_xscale() != "log" or t["value"] > 0]
        labelled.append(_threshold_labels(ax, [(t["value"], f"{t['side']} {t['value']:g}") for t in lines]))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    drawn: dict[str, dict] = {}
    for ax, panel, bars, texts in zip(axes.flat, panels, drawn_bars, labelled, strict=False):
        drawn[panel["title"]] = {
            "thresholds": [
                float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_color() == THRESHOLD_COLOR
            ],
            "edges": [float(e) for e in panel["histogram"]["edges"]],
            "series": {key: _bar_values(c) for key, c in bars.items()},
            "xscale": ax.get_xscale(),
            "count_ticks": _ticks_shown(ax.yaxis),
            "value_ticks": _ticks_shown(ax.xaxis),
            "axes_box": _box(ax, renderer),
            "label_boxes": [_box(t, renderer) for t in texts],
        }
    result = {"panels": drawn, "legend_box": _box(legend, renderer) if legend is not None else None}
    _save(fig, path)
    return result


def baseline_histogram(
    path: str, own: list[float], shuffled: list[float], title: str, ylabel: str = "captions"
) -> None:
    """Two overlaid histograms on shared bins: true caption-clip pairs against shuffled ones."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    both = own + shuffled
    if both:
        low, high = min(both), max(both)
        bins = np.linspace(low - 1e-6, high + 1e-6, 25)
        ax.hist(
            shuffled, bins=bins, color=BASELINE_COLOR, alpha=0.7, label=f"shuffled pairs (n={len(shuffled)})"
        )
        ax.hist(own, bins=bins, color=BAR_COLOR, alpha=0.7, label=f"own clip (n={len(own)})")
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _integer_ticks(ax.yaxis)
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlabel("CLIP cosine similarity")
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def contact_sheet(
    path: str, frames: np.ndarray, timestamps: np.ndarray, count: int, columns: int = 4
) -> list[float]:
    """`count` frames evenly spread over the clip in a grid, each with its time; returns the times."""
    from PIL import Image, ImageDraw, ImageFont

    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    tiles = [Image.fromarray(frames[i]) for i in picks]
    width = 256
    height = max(2, round(width * tiles[0].height / tiles[0].width))
    label_h, gap = 22, 4
    rows = math.ceil(len(tiles) / columns)
    cols = min(columns, len(tiles))
    sheet = Image.new("RGB", (cols * (width + gap) + gap, rows * (height + label_h + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for n, (tile, i) in enumerate(zip(tiles, picks, strict=True)):
        x = gap + (n % columns) * (width + gap)
        y = gap + (n // columns) * (height + label_h + gap)
        sheet.paste(tile.resize((width, height)), (x, y))
        draw.text((x + 2, y + height + 2), f"{timestamps[i]:.1f} s", fill="black", font=font)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sheet.save(path, quality=85)
    return [float(timestamps[i]) for i in picks]
