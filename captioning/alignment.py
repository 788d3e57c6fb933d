"""Caption-video alignment: how well each caption's words match the frames they claim to describe.

With the run's open_clip model (`scoring.aesthetic.clip_model`, loaded through the scorer's own
loader), a segment's score is the cosine similarity between its text embedding and the mean
embedding of the clip's frames inside the segment's span; the summary is scored against all frames.
A raw CLIP similarity means little on its own, so it is set against a baseline: the same score
with captions paired to other clips of the same batch (a fixed derangement), and the margin between
the two. `align_clips` does both pairings; the report (`alignment_report`) aggregates them over its
sample, and the alignment stage (`captioning.alignment_stage`) writes them per clip, as
`caption_metrics.alignment` (`clip_metrics`), over the clips of one task.
The temporal check asks whether a segment matches its own span better than the clip's other spans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from curation.scoring_config import AestheticConfig


@dataclass
class ClipFrames:
    """A clip's frames for alignment: [N, H, W, 3] uint8 and their times in seconds from the clip start."""

    key: str
    frames: np.ndarray
    timestamps: np.ndarray
    duration_s: float


@dataclass
class ClipAlignment:
    """One clip's alignment numbers (cosine similarities in [-1, 1])."""

    key: str
    summary: float | None
    segments: list[float | None] = field(default_factory=list)
    """Per segment; None when no frame lies inside its span."""
    own_span_best: list[bool] = field(default_factory=list)
    """Per segment with frames, for clips of 2+ such segments: does it match its own span best?"""


def span_frames(timestamps: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """Indices of the frames inside `[start_s, end_s)`, or the one nearest its middle when none is."""
    inside = np.flatnonzero((timestamps >= start_s) & (timestamps < end_s))
    if len(inside) == 0 and len(timestamps):
        inside = np.array([int(np.argmin(np.abs(timestamps - (start_s + end_s) / 2)))])
    return inside


class CaptionAligner:
    """open_clip image and text towers; build once, then `embed` frames and texts in batches."""

    def __init__(self, cfg: AestheticConfig, batch_size: int = 32):
        import open_clip

        from curation.scoring.aesthetic import load_clip, resolve_device

        self.device = resolve_device(cfg.device)
        self.model, self.preprocess = load_clip(cfg, self.device)
        self.tokenizer = open_clip.get_tokenizer(cfg.clip_model)
        self.batch_size = batch_size
        self.model_name = cfg.clip_model

    def _autocast(self):
        """float16 on a GPU, as the aesthetic scorer runs the same model; float32 on the CPU."""
        import torch

        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")

    def embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """[N, D] normalised image embeddings (float32)."""
        import torch
        from PIL import Image

        out = []
        for start in range(0, len(frames), self.batch_size):
            pixels = torch.stack(
                [self.preprocess(Image.fromarray(f)) for f in frames[start : start + self.batch_size]]
            )
            with torch.inference_mode(), self._autocast():
                out.append(
                    torch.nn.functional.normalize(
                        self.model.encode_image(pixels.to(self.device)).float(), dim=-1
                    )
                )
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """[M, D] normalised text embeddings (float32); texts longer than the context are truncated."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode(), self._autocast():
                out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-8)


def score_clip(
    key: str,
    caption: dict,
    frame_embeddings: np.ndarray,
    timestamps: np.ndarray,
    text_embeddings: dict[str, np.ndarray],
) -> ClipAlignment:
    """Alignment of one caption with one clip's frames (embeddings given, so pairings can be swapped)."""
    summary = caption.get("summary") or ""
    whole = _unit(frame_embeddings.mean(axis=0))
    result = ClipAlignment(key, float(whole @ text_embeddings[summary]) if summary else None)
    spans = []
    for seg in caption.get("segments") or []:
        idx = span_frames(timestamps, seg["start_s"], seg["end_s"])
        spans.append(_unit(frame_embeddings[idx].mean(axis=0)) if len(idx) else None)
    for seg, span in zip(caption.get("segments") or [], spans, strict=True):
        result.segments.append(float(span @ text_embeddings[seg["text"]]) if span is not None else None)
    valid = [
        (seg, span)
        for seg, span in zip(caption.get("segments") or [], spans, strict=True)
        if span is not None
    ]
    if len(valid) >= 2:
        matrix = np.stack([text_embeddings[s["text"]] for s, _ in valid]) @ np.stack([v for _, v in valid]).T
        result.own_span_best = [bool(np.argmax(row) == i) for i, row in enumerate(matrix)]
    return result


def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation of range(n) with no fixed point (n >= 2): clip i's caption goes to clip p[i]."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if n < 2 or not np.any(p == np.arange(n)):
            return [int(i) for i in p]


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def embed_caption_texts(captions: list[dict], aligner: CaptionAligner) -> dict[str, np.ndarray]:
    """Text embedding of every distinct summary and segment text of `captions`, embedded once each."""
    texts = sorted(
        {
            t
            for cap in captions
            for t in [cap.get("summary") or "", *(s["text"] for s in cap.get("segments") or [])]
            if t
        }
    )
    return dict(zip(texts, aligner.embed_texts(texts), strict=True))


def align_clips(
    clips: list[ClipFrames],
    captions: list[dict],
    frame_embeddings: list[np.ndarray],
    text_embeddings: dict[str, np.ndarray],
    seed: int = 0,
) -> tuple[list[ClipAlignment], list[ClipAlignment | None]]:
    """Each caption against its own clip, and each clip against another clip's caption.

    The second list is the shuffled baseline, per clip: clip j scored with caption i where a fixed
    derangement sends caption i to clip j (segment times rescaled to clip j's length). With fewer
    than two clips there is nothing to shuffle and every entry is None. The report's shuffled
    pairing and a record's `caption_metrics.alignment.baseline` both come from here.
    """
    own = [
        score_clip(c.key, cap, emb, c.timestamps, text_embeddings)
        for c, cap, emb in zip(clips, captions, frame_embeddings, strict=True)
    ]
    shuffled: list[ClipAlignment | None] = [None] * len(clips)
    if len(clips) >= 2:
        for i, j in enumerate(derangement(len(clips), seed)):
            # caption i against clip j; segment times are rescaled to clip j's length
            scale = clips[j].duration_s / clips[i].duration_s
            moved = {
                "summary": captions[i].get("summary"),
                "segments": [
                    {**s, "start_s": s["start_s"] * scale, "end_s": s["end_s"] * scale}
                    for s in captions[i].get("segments") or []
                ],
            }
            # keyed by the clip the caption came from: the record names it as `baseline_clip`
            shuffled[j] = score_clip(
                clips[i].key, moved, frame_embeddings[j], clips[j].timestamps, text_embeddings
            )
    return own, shuffled


def clip_metrics(own: ClipAlignment, shuffled: ClipAlignment | None, model: str) -> dict:
    """A record's `caption_metrics.alignment`: the caption's own similarities, the clip's similarity to
    another clip's summary (`baseline`, from `baseline_clip`), and `margin` = summary - baseline (None
    without a baseline, which a filter rule lets pass)."""
    baseline = shuffled.summary if shuffled is not None else None
    return {
        "summary": own.summary,
        "segments": own.segments,
        "baseline": baseline,
        "baseline_clip": shuffled.key if shuffled is not None else None,
        "margin": _margin(own.summary, baseline),
        "model": model,
    }


def align_batch(
    clips: list[ClipFrames], captions: list[dict], aligner: CaptionAligner, seed: int = 0
) -> list[dict]:
    """`clip_metrics` of every clip of a batch, the baseline drawn from the batch itself."""
    frame_embeddings = [aligner.embed_frames(c.frames) for c in clips]
    text_embeddings = embed_caption_texts(captions, aligner)
    own, shuffled = align_clips(clips, captions, frame_embeddings, text_embeddings, seed)
    return [clip_metrics(a, b, aligner.model_name) for a, b in zip(own, shuffled, strict=True)]


def alignment_report(
    clips: list[ClipFrames],
    captions: list[dict],
    aligner: CaptionAligner,
    seed: int = 0,
    frame_embeddings: list[np.ndarray] | None = None,
) -> dict:
    """Alignment of each caption with its own clip, against a shuffled pairing as the baseline.

    Returns the per-clip numbers and the means: summary and segment similarity for true and shuffled
    pairs, their margins, the share of segments that match their own span best, and every
    similarity of both pairings (`distributions`, for histograms). `frame_embeddings` (one
    `embed_frames` result per clip) may be given when the frames were embedded as they were decoded,
    so a large sample never holds every clip's frames at once.
    """
    if frame_embeddings is None:
        frame_embeddings = [aligner.embed_frames(c.frames) for c in clips]
    text_embeddings = embed_caption_texts(captions, aligner)
    own, by_clip = align_clips(clips, captions, frame_embeddings, text_embeddings, seed)
    shuffled = [a for a in by_clip if a is not None]
    best = [b for a in own for b in a.own_span_best]
    summary_true = _mean([a.summary for a in own])
    summary_base = _mean([a.summary for a in shuffled])
    segment_true = _mean([s for a in own for s in a.segments])
    segment_base = _mean([s for a in shuffled for s in a.segments])
    return {
        "model": aligner.model_name,
        "clips": len(clips),
        "summary": {
            "mean": summary_true,
            "shuffled_mean": summary_base,
            "margin": _margin(summary_true, summary_base),
        },
        "segments": {
            "mean": segment_true,
            "shuffled_mean": segment_base,
            "margin": _margin(segment_true, segment_base),
        },
        "temporal": {
            "segments_checked": len(best),
            "own_span_best_share": float(np.mean(best)) if best else None,
        },
        "distributions": {
            "summary": {
                "own": _present([a.summary for a in own]),
                "shuffled": _present([a.summary for a in shuffled]),
            },
            "segments": {
                "own": _present([s for a in own for s in a.segments]),
                "shuffled": _present([s for a in shuffled for s in a.segments]),
            },
        },
        "per_clip": [
            {"key": a.key, **clip_metrics(a, b, aligner.model_name), "segment_mean": _mean(a.segments)}
            for a, b in zip(own, by_clip, strict=True)
        ],
    }


def _present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _margin(true: float | None, base: float | None) -> float | None:
    return None if true is None or base is None else true - base
