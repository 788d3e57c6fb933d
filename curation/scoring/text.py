"""Burned-in text in a clip: subtitles, watermarks, tickers, "subscribe" overlays.

A model trained on clips with text overlays learns to paint text. This scorer runs PP-OCR text
detection (the DB detector of PaddleOCR, PP-OCRv4) on a few of the clip's samples, through
`rapidocr-onnxruntime`, whose wheel ships the ONNX weights: it runs offline, on onnxruntime's CPU
provider, or its CUDA one where onnxruntime-gpu is installed. It reads the samples every scorer
reads (curation.frames): no decode of its own.

- `text_area`: the largest share of a frame covered by text boxes, over the searched frames. Boxes are
  unioned (rasterised into one mask), so overlapping boxes never count twice and the share stays <= 1.
  Whole frames, bars included: subtitles are often burned into the letterbox.
- `text_boxes`: the most text boxes found in one frame (a line of words is usually one box).

With `recognize`, the boxes are also read (PP-OCR recognition) and the distinct strings returned, for
the captioner's prompt. Boxes are the detector's own, grown by its `unclip_ratio` (1.6) around the
glyphs, so `text_area` is somewhat larger than the inked pixels.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from curation.config import ConfigError
from curation.frames import SampledFrames
from curation.scoring_config import TextConfig

TEXT_SCORES = ("text_area", "text_boxes")
KEY = "scoring.text"
CUDA = "CUDAExecutionProvider"
# rapidocr logs through loggers of these names, each with a handler of its own that ignores the
# application's logging setup; what they say (provider fallbacks) is said here once, in our words.
RAPIDOCR_LOGGERS = ("OrtInferSession", "RapidOCR")

log = logging.getLogger(__name__)


@dataclass
class TextReading:
    """What the scorer found in one clip."""

    scores: dict[str, float | int | None]
    texts: list[str] | None = None  # recognised strings; None when recognition is off


@contextlib.contextmanager
def _rapidocr_quiet() -> Iterator[None]:
    """rapidocr's loggers switched off while its sessions are built, and restored after."""
    loggers = [logging.getLogger(name) for name in RAPIDOCR_LOGGERS]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, before, strict=True):
            logger.disabled = disabled


def use_cuda(device: str) -> bool:
    """Whether to run on onnxruntime's CUDA provider: `auto` when it has one and a GPU is visible."""
    import onnxruntime

    has_cuda = CUDA in onnxruntime.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            f"{KEY}.device: cuda asked for, but onnxruntime has no {CUDA} (install onnxruntime-gpu "
            f"matching your CUDA, or set {KEY}.device=cpu)"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") not in ("", "-1")  # set empty: no GPU for this process
    return device == "cuda" or (device == "auto" and has_cuda and visible)


def _model_config(threads: int, cuda: bool) -> dict:
    """rapidocr's shipped config (`config.yaml`: the model files in its wheel) for our sessions."""
    import rapidocr_onnxruntime
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    config = update_model_path(read_yaml(Path(rapidocr_onnxruntime.__file__).parent / "config.yaml"))
    for section in ("Det", "Rec"):
        config[section].update(
            intra_op_num_threads=max(1, min(threads, os.cpu_count() or 1)),
            inter_op_num_threads=1,
            use_cuda=cuda,
            use_dml=False,
        )
    return config


def detection_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the long side near `max_side`, both multiples of 32 as the network needs."""
    scale = max_side / max(width, height)
    return max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32)


def frame_indices(frames: SampledFrames | np.ndarray, count: int) -> list[int]:
    """Up to `count` samples evenly spread over the clip (by time; by position for a bare array)."""
    fractions = [(i + 0.5) / count for i in range(count)]
    if isinstance(frames, SampledFrames):
        picked = frames.nearest(fractions)
    else:
        picked = [min(len(frames) - 1, int(f * len(frames))) for f in fractions]
    return sorted(set(picked))


def union_area(boxes: np.ndarray, size: tuple[int, int]) -> float:
    """Share of a `size` (width, height) frame covered by the union of quadrilaterals `boxes` [K, 4, 2]."""
    if len(boxes) == 0:
        return 0.0
    mask = np.zeros((size[1], size[0]), np.uint8)
    for box in boxes:  # one at a time: polygons filled together are filled even-odd, overlaps left out
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    return float(mask.mean())


def crop_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The quadrilateral `box` (clockwise from top left) cut out and straightened, as PP-OCR reads it."""
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    )
    return np.rot90(crop) if height >= 1.5 * width else crop  # vertical text reads rotated


def _transient(exc: Exception) -> Exception:
    """onnxruntime's failure to allocate (GPU memory) as MemoryError, which the stages retry."""
    text = str(exc).lower()
    if "out of memory" in text or "failed to allocate" in text:
        return MemoryError(f"text detection: {str(exc)[-300:]}")
    return exc


class TextScorer:
    """PP-OCR text detection (and, with `recognize`, recognition); loads the models once."""

    names = TEXT_SCORES

    def __init__(self, cfg: TextConfig, threads: int = 1):
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

        self.cfg = cfg
        cuda = use_cuda(cfg.device)
        config = _model_config(threads, cuda)
        det = config["Det"] | {"box_thresh": cfg.box_threshold, "limit_type": "max"}
        det["limit_side_len"] = 1 << 16  # frames come sized already (detection_size): never resized again
        with _rapidocr_quiet():
            self.detector = TextDetector(det)
            self.recognizer = None
            if cfg.recognize:
                from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

                self.recognizer = TextRecognizer(config["Rec"])
        self.provider = self.detector.infer.session.get_providers()[0]
        if cuda and self.provider != CUDA:
            log.warning(
                "%s: onnxruntime could not start its CUDA provider (see its error above: a CUDA or cuDNN "
                "library it needs is missing or of another version); text detection runs on the CPU",
                KEY,
            )

    def score(self, frames: SampledFrames | np.ndarray) -> dict[str, float | int | None]:
        """`text_area` and `text_boxes` of a clip's samples (`SampledFrames`, or [N, H, W, 3] uint8 RGB)."""
        return self.measure(frames).scores

    def measure(self, frames: SampledFrames | np.ndarray) -> TextReading:
        """Scores, and the recognised strings when `recognize` is on."""
        rgb = frames.rgb if isinstance(frames, SampledFrames) else np.asarray(frames)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or len(rgb) == 0:
            raise ValueError(f"expected [N, H, W, 3] frames, got shape {rgb.shape}")
        size = detection_size(rgb.shape[2], rgb.shape[1], self.cfg.max_side)
        area, count, texts = 0.0, 0, [] if self.recognizer is not None else None
        for index in frame_indices(frames, self.cfg.frames):
            image = self._resized(rgb[index], size)
            boxes = self._detect(image)
            area, count = max(area, union_area(boxes, size)), max(count, len(boxes))
            if texts is not None and len(boxes):
                texts += self._recognize(image, boxes)
        scores = {"text_area": area, "text_boxes": count}
        return TextReading(scores, None if texts is None else self._distinct(texts))

    @staticmethod
    def _resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A sample at detection size, BGR as PP-OCR's models were trained (on cv2.imread images)."""
        down = size[0] * size[1] < rgb.shape[0] * rgb.shape[1]
        image = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
        return np.ascontiguousarray(image[..., ::-1])

    def _detect(self, image: np.ndarray) -> np.ndarray:
        """[K, 4, 2] boxes, clockwise from top left, in pixels of `image`, top to bottom."""
        try:
            boxes, _ = self.detector(image)
        except Exception as exc:
            raise _transient(exc) from exc
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        order = np.lexsort((boxes[:, 0, 0], boxes[:, 0, 1]))
        return boxes[order]

    def _recognize(self, image: np.ndarray, boxes: np.ndarray) -> list[str]:
        try:
            read, _ = self.recognizer([crop_box(image, box) for box in boxes])
        except Exception as exc:
            raise _transient(exc) from exc
        return [text for text, confidence in read if confidence >= self.cfg.min_confidence]

    def _distinct(self, texts: list[str]) -> list[str]:
        """Strings in order of first appearance, once each (ignoring case and spaces), capped."""
        seen, out = set(), []
        for text in texts:
            text = " ".join(text.split())[: self.cfg.max_chars]
            key = "".join(text.split()).casefold()  # OCR often drops or adds a space
            if key and key not in seen:
                seen.add(key)
                out.append(text)
        return out[: self.cfg.max_strings]
