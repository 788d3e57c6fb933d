"""`reelmill dedup`: near-duplicate clips found among CLIP embeddings, the better copy kept.

(a) `curation.dedup` on constructed vectors, where the truth is known: copies of one source (cosine
0.985-0.998, as re-encodes and small crops are with CLIP ViT-L/14) among distinct clips that share
scenes (cosine up to ~0.9, as different shots of one scene are). (b) The real path: `curate` with the
tiny random-weight CLIP over one source ingested under two names, re-encoded smaller and cropped, and
three distinct sources; then `reelmill dedup OUT`, the training stream filtered by its result, and
`--materialize`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import model_overrides, shard_samples, tar_bytes
from curation import config, ffmpeg_tools, synthetic
from curation import dedup as method
from curation.layout import OutputLayout
from curation.scoring_config import ScoringConfig
from curation.shards import iter_samples
from curation.synthetic import Shot, VideoSpec
from jobs.cli import main
from jobs.dedup import _cluster_batch
from jobs.job_configs import CurateJobConfig, DedupConfig

THRESHOLD = DedupConfig().threshold

# ---------------------------------------------------------------------------------------------------
# (a) constructed vectors


def near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine to the unit vector `v` is exactly `cos`."""
    u = rng.standard_normal(v.shape)
    u -= (u @ v) * v
    return cos * v + np.sqrt(1 - cos**2) * u / np.linalg.norm(u)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def corpus(seed: int = 0, scenes: int = 60, dim: int = 256):
    """(vectors [N, dim], source of each row): scenes of 3-5 distinct shots (cosine ~0.86 to each other),
    a third of the shots with 1-3 copies (cosine 0.985-0.998 to the shot)."""
    rng = np.random.default_rng(seed)
    vectors, source = [], []
    for scene in range(scenes):
        centre = unit(rng.standard_normal(dim))
        for shot in range(rng.integers(3, 6)):
            original = near(centre, 0.93, rng)
            name = f"{scene}-{shot}"
            vectors.append(original)
            source.append(name)
            if rng.random() < 1 / 3:
                for _ in range(rng.integers(1, 4)):
                    vectors.append(near(original, rng.uniform(0.985, 0.998), rng))
                    source.append(name)
    return np.array(vectors, dtype=np.float32), np.array(source)


def roots(duplicate_of: np.ndarray) -> np.ndarray:
    """The kept clip that stands for each row (itself when kept)."""
    return np.where(duplicate_of >= 0, duplicate_of, np.arange(len(duplicate_of)))


def check_grouping(out: dict, source: np.ndarray) -> None:
    """Every copy of a source shares one kept clip, and no two sources share one."""
    dup = out["duplicate_of"]
    assert (dup[dup >= 0] >= 0).all() and (dup[dup[dup >= 0]] == -1).all()  # duplicates of kept clips
    root = roots(dup)
    by_source: dict[str, set] = {}
    for r, s in zip(root, source, strict=True):
        by_source.setdefault(s, set()).add(int(r))
    assert all(len(r) == 1 for r in by_source.values()), "copies of one source kept apart"
    owners = [next(iter(r)) for r in by_source.values()]
    assert len(set(owners)) == len(owners), "two distinct sources merged"
    assert (source[root] == source).all()


def test_every_copy_is_found_and_no_distinct_pair_merged_at_the_default_threshold():
    vectors, source = corpus()
    pairwise = unit_rows(vectors) @ unit_rows(vectors).T
    same = source[:, None] == source[None, :]
    assert pairwise[~same].max() < THRESHOLD - 0.02  # the corpus is what it says: distinct stays apart
    assert pairwise[same].min() > THRESHOLD + 0.01
    rng = np.random.default_rng(1)
    rank = method.keep_order([rng.random(len(vectors))], ids(len(vectors)))
    out = method.dedup(vectors, rank, THRESHOLD)
    assert (out["cluster"] == 0).all()  # a small corpus is one cluster
    check_grouping(out, source)
    dups = out["duplicate_of"] >= 0
    assert dups.sum() == len(source) - len(set(source))
    assert (out["similarity"][dups] > THRESHOLD).all() and np.isnan(out["similarity"][~dups]).all()
    # a kept clip's closest call: below the threshold, and the closest distinct clip of its scene
    assert (out["nearest_kept"][~dups] < THRESHOLD).all() and np.isnan(out["nearest_kept"][dups]).all()


def test_the_same_holds_across_many_clusters_with_probing():
    vectors, source = corpus(seed=2, scenes=150)
    rank = method.keep_order([np.zeros(len(vectors))], ids(len(vectors)))
    out = method.dedup(vectors, rank, THRESHOLD, target_cluster_size=40, probe=3, seed=3)
    assert len(set(out["cluster"])) == method.num_clusters(len(vectors), 40) > 10
    check_grouping(out, source)


def test_a_pair_straddling_two_clusters_is_found_by_probing_the_next_cluster():
    rng = np.random.default_rng(4)
    a, b = np.eye(64)[0], np.eye(64)[1]
    group_a = [near(a, 0.8, rng) for _ in range(100)]
    group_b = [near(b, 0.8, rng) for _ in range(100)]
    mid, apart = unit(a + b), unit(a - b)
    p, q = unit(mid + 0.123 * apart), unit(mid - 0.123 * apart)  # cosine 0.97, p nearer a, q nearer b
    vectors = np.array([p, q, *group_a, *group_b], dtype=np.float32)
    rank = np.arange(len(vectors))  # p first
    alone = method.dedup(vectors, rank, THRESHOLD, target_cluster_size=101, probe=1)
    assert alone["cluster"][0] != alone["cluster"][1]
    assert (alone["duplicate_of"] == -1).all()  # plain cluster-based dedup misses the pair
    probed = method.dedup(vectors, rank, THRESHOLD, target_cluster_size=101, probe=2)
    assert probed["duplicate_of"][1] == 0 and probed["similarity"][1] == pytest.approx(0.97, abs=2e-3)
    assert (probed["duplicate_of"][2:] == -1).all()


def test_the_better_copy_is_kept_by_aesthetic_then_duration_then_clip_id():
    rng = np.random.default_rng(5)
    original = unit(rng.standard_normal(32))
    vectors = np.array([near(original, 0.99, rng) for _ in range(6)], dtype=np.float32)
    aesthetic = np.array([5.0, 6.0, 6.0, np.nan, 6.0, 6.0])
    duration = np.array([9.0, 2.0, 4.0, 20.0, 4.0, 4.0])
    clip_ids = np.array(["a", "b", "z", "c", "y", "x"], dtype=object)
    rank = method.keep_order([aesthetic, duration], clip_ids)
    # 6.0 before 5.0 before no score; among the 6.0s the longest, then the smallest clip_id
    assert [clip_ids[i] for i in np.argsort(rank)] == ["x", "y", "z", "b", "a", "c"]
    out = method.dedup(vectors, rank, THRESHOLD)
    kept = int(np.flatnonzero(out["duplicate_of"] == -1)[0])
    assert clip_ids[kept] == "x" and (out["duplicate_of"] >= 0).sum() == 5


def test_degenerate_inputs_are_rows_with_a_reason_never_a_crash():
    one = method.dedup(np.ones((1, 8), np.float32), np.zeros(1, np.int64), THRESHOLD)
    assert one["cluster"].tolist() == [0] and one["duplicate_of"].tolist() == [-1]

    same = method.dedup(np.ones((30, 8), np.float32), np.arange(30), THRESHOLD)
    assert same["duplicate_of"].tolist() == [-1] + [0] * 29
    assert np.allclose(same["similarity"][1:], 1.0)

    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((6, 8)).astype(np.float32)
    vectors[1, 3], vectors[2, 0], vectors[3] = np.nan, np.inf, 0.0
    vectors[4] = vectors[0] * 3  # a copy of row 0 at another scale: the same direction
    out = method.dedup(vectors, np.arange(6), THRESHOLD)
    assert out["reason"].tolist() == [
        None,
        method.NON_FINITE,
        method.NON_FINITE,
        method.ZERO_VECTOR,
        None,
        None,
    ]
    assert out["cluster"][1:4].tolist() == [-1, -1, -1] and (out["duplicate_of"][1:4] == -1).all()
    assert out["duplicate_of"][4] == 0

    nothing = method.dedup(np.full((3, 8), np.nan, np.float32), np.arange(3), THRESHOLD)
    assert (nothing["cluster"] == -1).all() and (nothing["duplicate_of"] == -1).all()
    empty = method.dedup(np.zeros((0, 8), np.float32), np.zeros(0, np.int64), THRESHOLD)
    assert len(empty["duplicate_of"]) == 0


def test_k_degrades_to_one_cluster_for_a_small_corpus():
    assert [method.num_clusters(n, 1000) for n in (0, 1, 999, 1000, 1001, 25_000)] == [1, 1, 1, 1, 2, 25]
    x = method.normalize(np.random.default_rng(7).standard_normal((5, 8)))[0]
    assert method.kmeans(x, np.arange(5), k=50).shape == (5, 8)  # never more clusters than clips


def greedy_reference(x: np.ndarray, threshold: float):
    """The rule spelled out, O(n^2): each clip duplicates the first kept clip above the threshold."""
    sims = x @ x.T
    kept, dup = [], np.full(len(x), -1)
    for i in range(len(x)):
        hits = [j for j in kept if sims[i, j] > threshold]
        if hits:
            dup[i] = hits[0]
        else:
            kept.append(i)
    nearest = np.full(len(x), np.nan)
    for i in kept:
        others = [sims[i, j] for j in kept if j != i]
        nearest[i] = max(others) if others else np.nan
    return dup, nearest


def test_the_blocked_pass_matches_the_rule_spelled_out():
    vectors, _ = corpus(seed=8, scenes=12, dim=48)
    x = method.normalize(vectors)[0]
    result = method.dedup_cluster(x, 0.9, block=7)  # a low threshold: many duplicates, across blocks
    dup, nearest = greedy_reference(x, 0.9)
    assert result.duplicate_of.tolist() == dup.tolist() and (dup >= 0).sum() > 10
    assert np.allclose(result.nearest_kept, nearest, equal_nan=True, atol=1e-5)


def test_a_clip_that_becomes_a_duplicate_across_clusters_takes_its_own_duplicates_along():
    duplicate_of = np.array([-1, -1, 1, -1])
    similarity = np.array([np.nan, np.nan, 0.99, np.nan], np.float32)
    assert method.resolve_cross(duplicate_of, similarity, np.arange(4), [(1, 0, 0.97), (3, 2, 0.98)]) == 1
    assert duplicate_of.tolist() == [-1, 0, 0, -1]  # (3, 2): 2 was a duplicate already, so no evidence
    assert similarity[1] == pytest.approx(0.97)


def test_a_bug_on_one_cluster_is_that_clusters_rows():
    x = np.eye(4, dtype=np.float16)
    good = method.ClusterPlan(0, np.array([0, 1]), np.array([], dtype=np.int64))
    bad = method.ClusterPlan(1, np.array([2, 99]), np.array([], dtype=np.int64))
    (_, result, error), (_, none, failure) = _cluster_batch(x, [good, bad], THRESHOLD)
    assert error is None and result.duplicate_of.tolist() == [-1, -1]
    assert none is None and failure["reason"].startswith("internal_error: dedup.cluster: IndexError")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids(n: int) -> np.ndarray:
    return np.array([f"clip{i:05d}" for i in range(n)], dtype=object)


# ---------------------------------------------------------------------------------------------------
# (b) the real path: curate with the tiny CLIP, then `reelmill dedup`

COPIES = ("source", "reupload", "smaller", "cropped")
DISTINCT = {"mandelbrot": "mandelbrot", "bars": "bars", "gradients": "gradients"}
TINY_THRESHOLD = 0.988
"""The tiny random-weight CLIP squeezes every image into a narrow cone: measured on this corpus, the
copies sit at cosine >= 0.992 to each other, the distinct sources at 0.89-0.979 to them and to each
other. Real CLIP ViT-L/14 spreads distinct shots far wider, so the default threshold (0.95) is for it;
at 0.95 the tiny model merges distinct sources too (only constructed vectors, in (a), can show the
default keeping them apart), and only a threshold on its own scale shows them kept apart here."""


@pytest.fixture(scope="module")
def curated(tmp_path_factory, tiny_aesthetic, ray_local):
    """One curate run (aesthetic on, with the tiny CLIP) over the copies and the distinct sources."""
    from jobs.curate import run_curate

    videos = tmp_path_factory.mktemp("dedup-videos")
    source = synthetic.make_video(videos / "source.mp4", VideoSpec([Shot("testsrc2", 60)], 320, 240))
    shutil.copy(source, videos / "reupload.mp4")  # the same file, ingested under another name

    def derive(name: str, chain) -> None:
        stream = chain(ffmpeg.input(str(source)).video)
        ffmpeg_tools.run_stream(stream.output(str(videos / name), vcodec="libx264", crf=30), 60)

    derive("smaller.mp4", lambda v: v.filter("scale", 192, 144))  # re-encoded at another size
    derive("cropped.mp4", lambda v: v.filter("crop", 288, 216, 16, 12))  # 10 % cropped off
    for name, lavfi in DISTINCT.items():
        synthetic.make_video(videos / f"{name}.mp4", VideoSpec([Shot(lavfi, 60)], 320, 240))
    fields = {f.name for f in dataclasses.fields(ScoringConfig)}
    sets = [
        *model_overrides(tiny_aesthetic), "captioning.enabled=false", "report.enabled=false",
        "filters.mode=score-only", "scoring.motion.enabled=false", "scoring.quality.enabled=false",
        "input.videos_per_task=4", "shards.max_clips=3",
        *(["scoring.text.enabled=false"] if "text" in fields else []),
    ]  # fmt: skip
    out = tmp_path_factory.mktemp("dedup-run") / "out"
    run_curate([str(videos)], str(out), config.load(CurateJobConfig, "curate", "default", sets))
    layout = OutputLayout(str(out))
    clips = layout.read_manifest(layout.clips_manifest).to_pylist()
    by_name = {r["source"].rsplit("/", 1)[-1].removesuffix(".mp4"): r for r in clips if r["kept"]}
    assert sorted(by_name) == sorted([*COPIES, *DISTINCT])  # one clip each
    return {"out": out, "layout": layout, "clips": by_name}


def dedup(curated, *args: str) -> tuple[dict[str, dict], dict]:
    """Run `reelmill dedup` as a user does; (its rows by source name, its run.json)."""
    assert main(["dedup", str(curated["out"]), *args]) == 0
    layout = curated["layout"]
    parts = layout.manifest_parts(layout.path("manifest", "dedup"))
    assert [p.rsplit("/", 1)[-1] for p in parts] == ["dedup.parquet"]  # one file, replaced on a rerun
    rows = {r["clip_id"]: r for r in pq.read_table(parts[0]).to_pylist()}
    names = {c["clip_id"]: name for name, c in curated["clips"].items()}
    run = json.loads((curated["out"] / "dedup" / "run.json").read_text())
    return {names[k]: r | {"duplicate_of": names.get(r["duplicate_of"])} for k, r in rows.items()}, run


def root(rows: dict, name: str) -> str:
    return rows[name]["duplicate_of"] or name


def test_every_copy_is_found_through_the_real_path_at_the_default_threshold(curated):
    rows, run = dedup(curated)
    assert all(r["status"] == "ok" and r["cluster"] == 0 for r in rows.values())
    assert len({root(rows, name) for name in COPIES}) == 1  # the four copies: one clip kept for them
    for name in COPIES:
        if rows[name]["duplicate_of"]:
            assert rows[name]["similarity"] > THRESHOLD
    keep = (curated["out"] / "dedup" / "keep.txt").read_text().split()
    assert sorted(keep) == sorted(r["clip_id"] for r in rows.values() if not r["duplicate_of"])
    assert run["state"] == "finished" and run["config"]["threshold"] == THRESHOLD
    assert run["counts"]["clips"] == 7 and run["counts"]["duplicates"] == 7 - len(keep)
    assert run["errors"]["in_error"] == 0 and run["inputs"]["embedding_dim"] == 768


def test_at_the_tiny_models_scale_distinct_sources_stay_apart_and_the_best_copy_is_kept(curated):
    rows, run = dedup(curated, "--threshold", str(TINY_THRESHOLD))
    best = max(COPIES, key=lambda n: curated["clips"][n]["scores"]["aesthetic"])  # the tiny CLIP's say
    assert {name for name, r in rows.items() if not r["duplicate_of"]} == {best, *DISTINCT}
    assert {rows[n]["duplicate_of"] for n in COPIES if n != best} == {best}
    for name in DISTINCT:  # each distinct source's closest call stayed under the threshold
        assert rows[name]["nearest_kept"] < TINY_THRESHOLD
    assert run["counts"]["duplicates"] == 3 and run["similarity"]["duplicates"]["p0"] > TINY_THRESHOLD


def test_the_training_stream_skips_the_duplicates(curated, tmp_path):
    from training.data import ShardDataModule

    rows, _ = dedup(curated, "--threshold", str(TINY_THRESHOLD))
    duplicates = {curated["clips"][n]["clip_id"] for n, r in rows.items() if r["duplicate_of"]}
    # the run was not captioned: the same shards with a caption each, as a captioned run has them
    shards = tmp_path / "shards"
    shards.mkdir()
    for url in curated["layout"].shard_files():
        samples = [(s.pop("__key__"), s | {"txt": b"a test pattern"}) for s in iter_samples(url)]
        (shards / url.rsplit("/", 1)[-1]).write_bytes(tar_bytes(samples))
    dm = ShardDataModule(
        str(shards), dedup=str(curated["out"]), batch_size=1, num_workers=0, resampled=False,
        shuffle_buffer=0, num_frames=2, fps=2.0, height=32, width=32,
    )  # fmt: skip
    keys = [k for batch in dm.train_dataloader() for k in batch["__key__"]]
    everything = {c["clip_id"] for c in curated["clips"].values()}
    assert sorted(keys) == sorted(everything - duplicates)
    assert dm.counts()["duplicate"] == len(duplicates) == 3 and dm.counts()["samples"] == 4


def test_materialize_writes_the_shards_without_the_duplicates(curated, tmp_path):
    target = tmp_path / "deduped"
    rows, run = dedup(curated, "--threshold", str(TINY_THRESHOLD), "--materialize", str(target))
    kept = {curated["clips"][n]["clip_id"] for n, r in rows.items() if not r["duplicate_of"]}
    originals = shard_samples(curated["layout"])
    found = {}
    for url in sorted(str(p) for p in (target / "shards").glob("*.tar")):
        for sample in wds.WebDataset(url, shardshuffle=False):
            found[sample["__key__"]] = sample
    assert set(found) == kept
    for key, sample in found.items():  # byte for byte what the run's shards hold
        assert sample["mp4"] == originals[key]["mp4"] and sample["json"] == originals[key]["json"]
    assert run["materialize"]["written"] == len(kept) and run["materialize"]["duplicates_left_out"] == 3
    assert json.loads((target / "run.json").read_text())["job"] == "dedup"
    assert not list(target.glob("_state"))  # the lock is gone
    # again at the default threshold into the same place: fewer clips, no stale shard left behind
    rows, run = dedup(curated, "--materialize", str(target))
    kept = {curated["clips"][n]["clip_id"] for n, r in rows.items() if not r["duplicate_of"]}
    written = {s["__key__"] for p in (target / "shards").glob("*.tar") for s in iter_samples(str(p))}
    assert written == kept and run["materialize"]["shards"] == len(list((target / "shards").glob("*.tar")))


def test_bad_embeddings_are_rows_with_a_reason_and_the_job_goes_on(curated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(curated["out"], out, ignore=shutil.ignore_patterns("dedup", "_state"))
    clips = curated["clips"]
    layout = OutputLayout(str(out))
    for uri in layout.manifest_parts(layout.embeddings_manifest):
        table = pq.read_table(uri)
        rows = table.to_pylist()
        rows = [r for r in rows if r["clip_id"] != clips["bars"]["clip_id"]]  # its scorer failed
        for r in rows:
            if r["clip_id"] == clips["gradients"]["clip_id"]:
                r["embedding"] = [float("nan")] * len(r["embedding"])
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), uri)
    assert main(["dedup", str(out)]) == 0
    result = {
        r["clip_id"]: r for r in pq.read_table(out / "manifest" / "dedup" / "dedup.parquet").to_pylist()
    }
    assert result[clips["bars"]["clip_id"]]["status"] == "no_embedding"
    invalid = result[clips["gradients"]["clip_id"]]
    assert (invalid["status"], invalid["reason"], invalid["cluster"]) == (
        "invalid_embedding",
        "non_finite",
        -1,
    )
    keep = (out / "dedup" / "keep.txt").read_text().split()
    assert clips["bars"]["clip_id"] in keep and clips["gradients"]["clip_id"] in keep  # nothing lost
    run = json.loads((out / "dedup" / "run.json").read_text())
    assert run["counts"]["no_embedding"] == 1 and run["counts"]["invalid_embedding"] == 1
    assert run["errors"]["in_error"] == 2 and run["errors"]["internal_errors"] == 0
    # --max-error-fraction: the job wrote everything, then says 2 of 7 is too many
    assert main(["dedup", str(out), "--max-error-fraction", "0.1"]) == 3


def test_bad_input_is_exit_status_2_with_a_message(curated, tmp_path, capsys):
    assert main(["dedup", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["dedup", str(tmp_path / "empty")]) == 2
    assert "is not a reelmill run" in capsys.readouterr().err

    no_embeddings = tmp_path / "no-embeddings"
    shutil.copytree(curated["out"], no_embeddings, ignore=shutil.ignore_patterns("embeddings", "dedup"))
    run = json.loads((no_embeddings / "run.json").read_text())
    run["config"]["scoring"]["aesthetic"]["enabled"] = False
    (no_embeddings / "run.json").write_text(json.dumps(run))
    assert main(["dedup", str(no_embeddings)]) == 2
    assert "scoring.aesthetic.enabled=false" in capsys.readouterr().err

    mixed = tmp_path / "mixed"
    shutil.copytree(curated["out"], mixed, ignore=shutil.ignore_patterns("dedup"))
    schema = pa.schema([("clip_id", pa.string()), ("embedding", pa.list_(pa.float16(), 512))])
    pq.write_table(
        pa.Table.from_pylist([{"clip_id": "other", "embedding": [0.1] * 512}], schema=schema),
        mixed / "manifest" / "embeddings" / "task-000099.parquet",
    )
    assert main(["dedup", str(mixed)]) == 2
    assert "mixes embedding widths" in capsys.readouterr().err

    assert main(["dedup", str(curated["out"]), "--set", "keep_by=[scores.nonsense]"]) == 2
    assert "keep_by" in capsys.readouterr().err
    assert main(["dedup", str(curated["out"]), "--materialize", str(curated["out"])]) == 2
    assert not (mixed / "_state" / "lock.json").exists() and not (no_embeddings / "dedup").exists()


def test_a_stream_of_nothing_but_duplicates_ends_with_an_error_instead_of_spinning(tmp_path):
    from training.data import NothingUsable, ShardStream

    url = tmp_path / "shard-000000-000.tar"
    url.write_bytes(tar_bytes([(f"k{i}", {"mp4": b"x", "txt": b"t"}) for i in range(3)]))
    stream = ShardStream([str(url)], resampled=True, shuffle_buffer=0, exclude=frozenset({"k0", "k1", "k2"}))
    with pytest.raises(NothingUsable):
        next(iter(stream))
    counts = stream.counts()
    assert counts["duplicate"] >= 3000 and counts["shard_errors"] == 0 and counts["samples"] == 0
