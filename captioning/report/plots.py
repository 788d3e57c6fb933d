"""The report's figures: matplotlib PNGs (Agg, no display) and PIL contact sheets.

Each function writes one image file and returns what it drew that a reader must be able to trust
(the threshold lines, read back from the axes), so report.json and the tests can check the picture
says what the numbers say.
"""

from __future__ import annotations

import math
import os

import numpy as np

THRESHOLD_COLOR = "#d62728"
BAR_COLOR = "#4c72b0"
BASELINE_COLOR = "#999999"
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def bar_chart(path: str, items: list[tuple[str, float]], title: str, xlabel: str = "") -> None:
    """Horizontal bars, first item on top, each labelled with its value."""
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
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)


def histogram_grid(path: str, panels: list[dict], columns: int = 3) -> dict[str, list[float]]:
    """Small multiples: one histogram per panel (`title`, `histogram` {edges, counts}, optional
    `thresholds` [{side, value, share_beyond}]) with every threshold as a red dashed line.

    Returns, per panel title, the x positions of the threshold lines found on its axes.
    """
    plt = _pyplot()
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows), squeeze=False)
    drawn: dict[str, list[float]] = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        hist = panel["histogram"]
        if hist["counts"]:
            edges = np.asarray(hist["edges"])
            ax.stairs(hist["counts"], edges, fill=True, color=BAR_COLOR, alpha=0.85)
        for t in panel.get("thresholds") or []:
            share = t.get("share_beyond")
            side = "below" if t["side"] == "min" else "above"
            label = f"{t['side']} {t['value']:g}" + (f": {share:.0%} {side}" if share is not None else "")
            ax.axvline(t["value"], color=THRESHOLD_COLOR, linestyle="--", linewidth=1.6, label=label)
        if panel.get("thresholds"):
            ax.legend(fontsize=8, loc="upper right", frameon=False)
        ax.set_title(panel["title"], loc="left", fontsize=10)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        drawn[panel["title"]] = [
            float(line.get_xdata()[0]) for line in ax.get_lines() if line.get_color() == THRESHOLD_COLOR
        ]
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)
    return drawn


def baseline_histogram(path: str, own: list[float], shuffled: list[float], title: str) -> None:
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
        ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlabel("CLIP cosine similarity")
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
