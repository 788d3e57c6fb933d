"""The shard data module: clip decoding, captions, splitting by rank and worker, skips, buckets, latents."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from captioning.parsing import ParsedCaption, Segment, format_training_caption
from conftest import tar_bytes
from curation import ffmpeg_tools
from curation.inputs import expand_shards
from curation.shards import read_samples
from training.data import (
    COUNTERS,
    Bucket,
    ClipTooShort,
    CorruptClip,
    LoaderStatsCallback,
    ShardDataModule,
    ShardStream,
    caption_variants,
    decode_clip,
    to_model_range,
    uint8_to_model_range,
)

SMALL = {"num_frames": 9, "fps": 8.0, "height": 32, "width": 32}


# ---------------------------------------------------------------------------------------------
# helpers


def make_clip(path: Path, frames: np.ndarray, fps: int) -> bytes:
    """An mp4 (lossless H.264) of `frames` ([N, H, W] uint8 gray) at `fps`."""
    n, h, w = frames.shape
    argv = [
        ffmpeg_tools.FFMPEG, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}",
        "-r", str(fps), "-i", "pipe:", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    ffmpeg_tools.run(argv, 60, input_bytes=frames.tobytes())
    return path.read_bytes()


BITS = 8  # a counting clip's frame index, written as horizontal bands (bit b: rows 6b..6b+5 white or black)


def index_frame(i: int, width: int = 64) -> np.ndarray:
    """[48, width] uint8: frame `i` of a counting clip. Bands across the full width survive any crop of
    columns, scaling and chroma subsampling; solid levels would not read back exactly."""
    bits = [(i >> b) & 1 for b in range(BITS)]
    return np.repeat(np.array(bits, np.uint8) * 255, 6)[:, None].repeat(width, axis=1)


@pytest.fixture(scope="module")
def counting_clips(tmp_path_factory) -> dict[int, bytes]:
    """80 frames that show their own index, at 25 and at 30 fps, 64x48."""
    d = tmp_path_factory.mktemp("counting")
    frames = np.stack([index_frame(i) for i in range(80)])
    return {fps: make_clip(d / f"count{fps}.mp4", frames, fps) for fps in (25, 30)}


def frame_indices(video: torch.Tensor) -> list[int]:
    """Frame index of each decoded frame of a counting clip ([T, H, W, 3] uint8, H a multiple of 8)."""
    band = video.shape[1] // BITS
    levels = video.float().mean(dim=(2, 3)).reshape(len(video), BITS, band).mean(dim=2)  # [T, BITS]
    return [int(sum(1 << b for b in range(BITS) if row[b] > 128)) for row in levels]


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]], cut_at: int | None = None) -> str:
    """A webdataset shard of `samples` (KEY.EXT members); `cut_at` truncates the file to that many bytes."""
    data = tar_bytes(samples)
    path.write_bytes(data[:cut_at] if cut_at else data)
    return str(path)


@pytest.fixture(scope="module")
def curated(curated_run) -> dict:
    """The curated run's shards, and every sample by key with its shard."""
    urls = expand_shards([str(curated_run)])
    samples = {}
    for url in urls:
        for sample in read_samples(url):
            samples[sample["__key__"]] = sample | {"__url__": url}
    return {"out": str(curated_run), "urls": urls, "samples": samples}


def frames_at(record: dict, fps: float) -> int:
    return math.ceil(record["num_frames"] / record["fps"] * fps - 1e-6)


def record(sample: dict) -> dict:
    return json.loads(sample["json"])


class TagWorker(IterableDataset):
    """Adds the id of the data-loader worker that made each batch (to see who read what)."""

    def __init__(self, stream: ShardStream):
        self.stream = stream

    def __iter__(self):
        worker = get_worker_info().id
        for batch in self.stream:
            yield batch | {"worker": worker}


# ---------------------------------------------------------------------------------------------
# decode_clip


@pytest.mark.parametrize(("src_fps", "fps"), [(25, 10.0), (25, 16.0), (30, 10.0), (25, 40.0)])
def test_decode_picks_frames_by_timestamp(counting_clips, src_fps, fps):
    """Output frame k is the source frame nearest k / fps s (a tie to the later one), at any source rate."""
    step = src_fps / fps
    available = math.ceil(80 / src_fps * fps - 1e-6)
    n = min(available, 20)
    video = decode_clip(counting_clips[src_fps], n, fps, 24, 24, crop="start")
    assert video.shape == (n, 24, 24, 3) and video.dtype == torch.uint8
    assert frame_indices(video) == [math.floor(k * step + 0.5) for k in range(n)]
    center = decode_clip(counting_clips[src_fps], n, fps, 24, 24, crop="center")
    start = (available - n) // 2
    assert frame_indices(center) == [math.floor((start + k) * step + 0.5) for k in range(n)]


def test_decode_window_random_and_deterministic(counting_clips):
    clip = counting_clips[25]
    assert torch.equal(decode_clip(clip, 12, 10.0, 16, 16), decode_clip(clip, 12, 10.0, 16, 16))
    a = decode_clip(clip, 12, 10.0, 16, 16, crop="random", rng=random.Random(5))
    b = decode_clip(clip, 12, 10.0, 16, 16, crop="random", rng=random.Random(5))
    assert torch.equal(a, b)
    starts = set()
    for seed in range(8):
        got = frame_indices(decode_clip(clip, 12, 10.0, 16, 16, crop="random", rng=random.Random(seed)))
        start = round(got[0] / 2.5)
        assert got == [math.floor((start + k) * 2.5 + 0.5) for k in range(12)]  # a contiguous window
        starts.add(start)
    assert len(starts) > 1 and max(starts) <= 32 - 12  # 3.2 s at 10 fps: 32 frames


def test_decode_too_short_and_corrupt(counting_clips):
    clip = counting_clips[25]  # 3.2 s: 32 frames at 10 fps
    assert decode_clip(clip, 32, 10.0, 16, 16, crop="center").shape[0] == 32
    with pytest.raises(ClipTooShort):
        decode_clip(clip, 33, 10.0, 16, 16)
    with pytest.raises(CorruptClip):
        decode_clip(b"\x00\x01 not a video" * 100, 4, 10.0, 16, 16)
    with pytest.raises(CorruptClip):
        decode_clip(b"", 4, 10.0, 16, 16)


def test_decode_covers_then_center_crops(tmp_path):
    """A 128x48 clip whose middle 48 columns are white: covering 32x32 keeps the aspect (85x32), so the
    center crop is that white square; a squash or an off-center crop would show black."""
    frame = np.zeros((48, 128), np.uint8)
    frame[:, 40:88] = 255
    clip = make_clip(tmp_path / "box.mp4", np.stack([frame] * 10), 25)
    video = decode_clip(clip, 4, 25.0, 32, 32).float()
    assert video.shape == (4, 32, 32, 3)
    assert video[:, :, 2:30].mean() > 235
    wide = decode_clip(clip, 4, 25.0, 16, 64).float()  # 4:1 out of 8:3: scaled to 64x24, rows cropped
    assert wide[:, :, 22:42].mean() > 235 and wide[:, :, :14].mean() < 20
    frames = to_model_range(video.to(torch.uint8))
    assert frames.shape == (3, 4, 32, 32) and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1 and frames[:, :, :, 16].mean() > 0.85


# ---------------------------------------------------------------------------------------------
# captions


def test_caption_variants(curated):
    sample = next(iter(curated["samples"].values()))
    rec = record(sample)
    dense, summary = sample["txt"].decode().strip(), rec["caption"]["summary"]
    assert caption_variants(sample) == [dense, summary]
    no_txt = {k: v for k, v in sample.items() if k != "txt"}
    assert caption_variants(no_txt) == [dense, summary]  # built from the record, as curate writes KEY.txt
    no_summary = {"__key__": "k", "json": json.dumps({"caption": None}).encode(), "txt": b"a dog runs\n"}
    assert caption_variants(no_summary) == ["a dog runs"]
    segments_only = {"json": json.dumps({"caption": {"summary": "", "segments": [
        {"start_s": 0.0, "end_s": 1.5, "text": "it jumps"}]}}).encode()}  # fmt: skip
    assert caption_variants(segments_only) == [
        format_training_caption(ParsedCaption("", [Segment(0, 1.5, "it jumps")]))
    ]
    assert caption_variants({"__key__": "k", "mp4": b""}) == []


# ---------------------------------------------------------------------------------------------
# video batches


def test_video_batches_from_curated_shards(curated):
    samples = curated["samples"]
    dm = ShardDataModule(curated["out"], val_shards=curated["out"], batch_size=2, num_workers=2,
                         dense_caption_prob=0.5, epoch_samples=12, shuffle_buffer=8, seed=1,
                         **SMALL)  # fmt: skip
    loader = dm.train_dataloader()
    assert loader.batch_size is None and loader.persistent_workers and loader.prefetch_factor == 2
    assert loader.pin_memory == torch.cuda.is_available()  # pinned for a CUDA device, not otherwise
    batches = list(loader)
    assert len(loader) == len(batches) == 6
    kinds = set()
    for batch in batches:
        assert set(batch) == {"video", "caption", "__key__"}
        video = batch["video"]
        assert video.shape == (2, 3, 9, 32, 32) and video.dtype == torch.uint8
        assert video.float().std() > 5
        for key, caption in zip(batch["__key__"], batch["caption"], strict=True):
            dense, summary = samples[key]["txt"].decode().strip(), record(samples[key])["caption"]["summary"]
            assert caption in (dense, summary)
            kinds.add("dense" if caption == dense else "summary")
    assert kinds == {"dense", "summary"}
    assert dm.counts() == dict.fromkeys(COUNTERS, 0) | {"samples": 12}
    second_epoch = [b["__key__"] for b in loader]
    assert len(second_epoch) == 6 and second_epoch != [b["__key__"] for b in batches]  # reshuffled

    # validation: every clip once, center window, dense caption: exactly what decode_clip gives
    val = [b for b in dm.val_dataloader()]
    keys = [k for b in val for k in b["__key__"]]
    assert sorted(keys) == sorted(samples)
    first = val[0]
    key = first["__key__"][0]
    expected = to_model_range(decode_clip(samples[key]["mp4"], 9, 8.0, 32, 32, crop="center"))
    assert torch.equal(uint8_to_model_range(first["video"][0]), expected)
    assert first["caption"][0] == samples[key]["txt"].decode().strip()


def test_shard_inputs_in_every_form(curated):
    """A run's OUT, its shards/ as a file:// URI, a glob, brace patterns and pipe: commands all read the
    same clips."""
    urls, out = curated["urls"], curated["out"]
    shards = str(Path(out) / "shards")
    forms = {
        "out": out,
        "uri": f"file://{shards}",
        "glob": f"{shards}/shard-*.tar",
        "brace": [f"{shards}/shard-{{000000..000002}}-000.tar", f"{shards}/shard-000001-001.tar"],
        "pipe": [f"pipe:cat {u}" for u in urls],
    }
    for name, form in forms.items():
        dm = ShardDataModule(form, batch_size=3, num_workers=0, resampled=False, shuffle_buffer=0, **SMALL)
        keys = [k for b in dm.train_dataloader() for k in b["__key__"]]
        assert sorted(keys) == sorted(curated["samples"]), name


def test_shards_split_disjoint_across_ranks_and_workers(curated):
    """2 ranks x 2 real workers over 4 shards: each reads one shard of its own, and together all of them."""
    urls = curated["urls"]
    assert len(urls) == 4
    url_of = {k: s["__url__"] for k, s in curated["samples"].items()}
    seen: dict[tuple[int, int], set[str]] = {}
    keys = []
    for rank in range(2):
        stream = ShardStream(urls, batch_size=1, resampled=False, rank=rank, world_size=2, shuffle_buffer=4,
                             seed=3, buckets=[Bucket(9, 16, 16)], fps=8.0)  # fmt: skip
        for batch in DataLoader(TagWorker(stream), batch_size=None, num_workers=2):
            seen.setdefault((rank, batch["worker"]), set()).update(url_of[k] for k in batch["__key__"])
            keys += batch["__key__"]
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(s) == 1 for s in seen.values())
    assert set().union(*seen.values()) == set(urls)
    assert sorted(keys) == sorted(curated["samples"])  # every clip once

    # the data module caps workers at the shards per rank, and refuses ranks without a shard
    dm = ShardDataModule(urls, batch_size=1, num_workers=2, resampled=False, epoch_samples=2, rank=3,
                         world_size=4, **SMALL)  # fmt: skip
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and len(list(loader)) == 2
    with pytest.raises(ValueError, match="5 ranks"):
        ShardDataModule(urls, resampled=False, epoch_samples=2, rank=0, world_size=5).train_dataloader()
    with pytest.raises(ValueError, match="epoch_samples"):
        ShardDataModule(urls, resampled=False, rank=0, world_size=2).train_dataloader()
    # validation with fewer shards than ranks: split by sample, still disjoint and complete
    one = urls[0]
    val_keys = [
        [k for b in ShardDataModule(urls, val_shards=one, rank=r, world_size=3, **SMALL).val_dataloader()
         for k in b["__key__"]]
        for r in range(3)
    ]  # fmt: skip
    assert sorted(k for keys in val_keys for k in keys) == sorted(k for k, u in url_of.items() if u == one)
    assert all(len(keys) <= 1 for keys in val_keys)
    # resampled: more ranks x workers than shards, and every rank still gets its full epoch
    dm = ShardDataModule(urls, batch_size=1, num_workers=2, epoch_samples=3, rank=7, world_size=8, **SMALL)
    assert len(list(dm.train_dataloader())) == 3


def test_corrupt_and_short_clips_are_skipped_and_counted(curated, tmp_path):
    samples = curated["samples"]
    long_key = max(samples, key=lambda k: record(samples[k])["num_frames"])
    good = {k: v for k, v in samples[long_key].items() if k in ("mp4", "json", "txt")}
    bad = write_tar(tmp_path / "bad.tar", [
        ("bad-truncated", good | {"mp4": good["mp4"][: len(good["mp4"]) // 3]}),
        ("bad-garbage", good | {"mp4": random.Random(0).randbytes(20000)}),
        ("bad-no-video", {"json": good["json"], "txt": good["txt"]}),
        ("bad-good", good),
    ])  # fmt: skip
    whole = write_tar(tmp_path / "whole.tar", [("cut-good", good), ("cut-junk", {"mp4": b"\x00" * 200_000})])
    cut = write_tar(tmp_path / "cut.tar", [("cut-good", good), ("cut-junk", {"mp4": b"\x00" * 200_000})],
                    cut_at=Path(whole).stat().st_size - 100_000)  # in the junk member  # fmt: skip
    num_frames, fps = 50, 16.0
    short = {k for k, s in samples.items() if frames_at(record(s), fps) < num_frames}
    assert 0 < len(short) < len(samples)

    dm = ShardDataModule([curated["out"], bad, cut], batch_size=1, num_workers=2, resampled=False,
                         num_frames=num_frames, fps=fps, height=16, width=16)  # fmt: skip
    keys = [k for b in dm.train_dataloader() for k in b["__key__"]]
    assert sorted(keys) == sorted({*samples} - short | {"bad-good", "cut-good"})
    assert dm.counts() == dict.fromkeys(COUNTERS, 0) | {
        "samples": len(keys),
        "too_short": len(short),
        "corrupt": 3,
        "shard_errors": 1,
    }

    # an endless stream with nothing usable stops with an error instead of spinning
    dm = ShardDataModule(curated["out"], num_workers=0, num_frames=1000, fps=fps, height=16, width=16)
    with pytest.raises(RuntimeError, match="in a row skipped"):
        next(iter(dm.train_dataloader()))


def test_buckets_are_homogeneous_and_by_aspect_and_duration(curated):
    samples = curated["samples"]
    fps = 16.0
    buckets = [
        {"num_frames": 56, "height": 18, "width": 32},
        {"num_frames": 40, "height": 18, "width": 32},
        {"num_frames": 40, "height": 24, "width": 32},
        {"num_frames": 48, "height": 24, "width": 24},
    ]

    def expected(key: str) -> tuple[int, int, int]:
        rec = record(samples[key])
        fits = [b for b in buckets if b["num_frames"] <= frames_at(rec, fps)]
        longest = [b for b in fits if b["num_frames"] == max(f["num_frames"] for f in fits)]
        aspect = math.log(rec["width"] / rec["height"])
        best = min(longest, key=lambda b: abs(math.log(b["width"] / b["height"]) - aspect))
        return best["num_frames"], best["height"], best["width"]

    assert len({expected(k) for k in samples}) >= 3  # the clips really spread over buckets
    dm = ShardDataModule(curated["out"], buckets=buckets)
    assert (dm.num_frames, dm.height, dm.width) == (
        56,
        18,
        32,
    )  # the clip shape others read: the first bucket
    dm = ShardDataModule(curated["out"], val_shards=curated["out"], batch_size=2, num_workers=2, fps=fps,
                         buckets=buckets, epoch_samples=8, shuffle_buffer=8)  # fmt: skip
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batches = list(loader)
        assert batches
        for batch in batches:
            shapes = {expected(k) for k in batch["__key__"]}
            assert len(shapes) == 1  # one bucket per batch
            t, h, w = shapes.pop()
            assert batch["video"].shape == (len(batch["__key__"]), 3, t, h, w)
    assert sorted(k for b in batches for k in b["__key__"]) == sorted(samples)  # val: each clip once


# ---------------------------------------------------------------------------------------------
# latent batches


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_latent_batches(tmp_path):
    """Hand-made latent shards: float16 latents, per-variant text padded to the longest variant."""
    rng = np.random.default_rng(0)
    made = {}
    rows = []
    for i in range(8):
        t = 3 if i < 6 else 2  # two samples of another latent shape
        latent = rng.standard_normal((4, t, 4, 4)).astype(np.float16)
        dense_len, summary_len = 3 + i % 4, 2 + i % 2
        lengths = [dense_len] if i == 5 else [dense_len, summary_len]  # one clip without a summary
        width = max(lengths)
        text = np.zeros((len(lengths), width, 8), np.float16)
        mask = np.zeros((len(lengths), width), bool)
        for v, n in enumerate(lengths):
            text[v, :n] = rng.standard_normal((n, 8))
            mask[v, :n] = True
        caption = {"summary": f"summary {i}" if i != 5 else "", "segments": []}
        members = {
            "latent.npy": npy(latent),
            "text.npy": npy(text),
            "text_mask.npy": npy(mask),
            "json": json.dumps({"caption": caption}).encode(),
            "txt": f"dense {i}".encode(),
        }
        made[f"clip-{i}"] = (latent, text, mask)
        rows.append((f"clip-{i}", members))
    rows.append(("broken-npy", rows[0][1] | {"latent.npy": b"\x93NUMPY garbage"}))
    rows.append(("no-mask", {k: v for k, v in rows[1][1].items() if k != "text_mask.npy"}))
    urls = [write_tar(tmp_path / "latent-0.tar", rows[:5]), write_tar(tmp_path / "latent-1.tar", rows[5:])]

    dm = ShardDataModule(urls, kind="latent", batch_size=2, num_workers=2, resampled=False,
                         dense_caption_prob=0.5, seed=4)  # fmt: skip
    batches = list(dm.train_dataloader())
    assert sum(len(b["__key__"]) for b in batches) == 8 and dm.counts()["corrupt"] == 2
    chosen = set()
    for batch in batches:
        assert set(batch) == {"latents", "text", "text_mask", "caption", "__key__"}
        latents, text, mask = batch["latents"], batch["text"], batch["text_mask"]
        assert latents.dtype == torch.float32 and text.dtype == torch.float32 and mask.dtype == torch.bool
        assert text.shape[:2] == mask.shape and text.shape[2] == 8
        assert mask.sum(dim=1).max() == mask.shape[1]  # padded to the longest in the batch, no further
        assert len({tuple(x.shape) for x in latents}) == 1
        for row, (key, caption) in enumerate(zip(batch["__key__"], batch["caption"], strict=True)):
            latent, stored_text, stored_mask = made[key]
            assert torch.equal(latents[row], torch.from_numpy(latent.astype(np.float32)))
            variant = 0 if caption.startswith("dense") else 1
            chosen.add(variant)
            n = int(stored_mask[variant].sum())
            assert int(mask[row].sum()) == n and mask[row, :n].all()
            assert torch.equal(text[row, :n], torch.from_numpy(stored_text[variant, :n].astype(np.float32)))
            assert not text[row, n:].any()
            assert caption == (f"dense {key[-1]}" if variant == 0 else f"summary {key[-1]}")
    assert chosen == {0, 1}


# ---------------------------------------------------------------------------------------------
# in a Trainer


class Recorder(L.LightningModule):
    """Trains one parameter on the mean of each batch: enough to run the loops and see the batches."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_keys: list[str] = []
        self.val_keys: list[str] = []

    def training_step(self, batch, batch_idx):
        self.train_keys += batch["__key__"]
        return (self.w * batch["video"].float().mean()) ** 2 + self.w**2

    def validation_step(self, batch, batch_idx):
        self.val_keys += batch["__key__"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("with_val", [True, False])
def test_trainer_fit_with_stats_callback(curated, tmp_path, with_val):
    dm = ShardDataModule(curated["out"], val_shards=curated["out"] if with_val else None, batch_size=2,
                         num_workers=2, epoch_samples=6, **SMALL)  # fmt: skip
    module = Recorder()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", callbacks=[LoaderStatsCallback(every_n_batches=2)],
        logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    assert len(module.train_keys) == 12  # 3 batches of 2 per epoch
    assert sorted(set(module.val_keys)) == (sorted(curated["samples"]) if with_val else [])
    if with_val:
        assert len(module.val_keys) == 2 * len(curated["samples"])  # all of them, each epoch
    logged = trainer.logged_metrics
    assert logged["data/samples"] >= 12 and logged["data/too_short"] == 0 and logged["data/corrupt"] == 0
    assert logged["data/samples_per_s"] > 0 and logged["data/wait_s"] >= 0
