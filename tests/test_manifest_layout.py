"""The clip manifest as users query it: struct columns in DuckDB and pandas, key-value metadata, the
shard index, and the old layout still read by every reader.

Expected values come from the shards themselves (each clip's `KEY.json` read back with webdataset, the
tar headers read with `tarfile`), not from the code that wrote the manifest.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.filters import rule_reasons
from curation.layout import OutputLayout
from curation.record import CLIP_SCHEMA, drop_rule, manifest_row, table
from curation.scoring_config import FilterRule
from jobs.curate import score_distributions


def shard_records(out: Path) -> dict[str, dict]:
    """Every clip's KEY.json, read back from the shards with webdataset."""
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    return {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)}


def test_duckdb_reads_struct_fields_without_quoting(curated_run):
    records = shard_records(curated_run)
    query = (
        "SELECT clip_id, scores.motion, caption_metrics.coverage, caption.summary "
        f"FROM '{curated_run}/manifest/clips/*.parquet' WHERE kept"
    )
    got = {
        clip: (motion, coverage, summary) for clip, motion, coverage, summary in duckdb.sql(query).fetchall()
    }
    assert set(got) == set(records) and len(got) >= 4
    for clip, record in records.items():
        expected = (
            record["scores"]["motion"],
            record["caption_metrics"]["coverage"],
            record["caption"]["summary"],
        )
        assert got[clip] == expected


def test_parquet_metadata_names_the_schema_version_and_the_run(curated_run):
    run = json.loads((curated_run / "run.json").read_text())
    for name in ("clips", "videos"):
        for part in sorted((curated_run / "manifest" / name).glob("*.parquet")):
            meta = pq.read_schema(part).metadata
            assert meta[b"reelmill.schema_version"] == b"2"
            assert meta[b"reelmill.run_fingerprint"].decode() == run["config_fingerprint"]


def test_pandas_keeps_nullable_integers_and_booleans(curated_run):
    clips = pd.read_parquet(curated_run / "manifest" / "clips")
    assert str(clips["width"].dtype) == "Int32" and str(clips["num_frames"].dtype) == "Int64"
    assert str(clips["kept"].dtype) == "boolean"
    schema = pq.read_schema(next((curated_run / "manifest" / "clips").glob("*.parquet")))
    scores = schema.field("scores").type
    assert scores.field("text_boxes").type == pa.int64() and scores.field("motion").type == pa.float64()


def test_kept_rows_say_where_their_shard_is(curated_run):
    rows = pq.read_table(curated_run / "manifest" / "clips").to_pylist()
    written = {p.name for p in (curated_run / "shards").glob("*.tar")}
    for row in rows:
        if row["kept"]:
            assert row["location"] == "shards" and row["shard"] in written
        else:
            assert row["location"] is None and row["shard"] is None


def tar_numbers(path: Path) -> dict:
    keys, members = [], 0
    with tarfile.open(path) as tar:
        for info in tar:
            members += 1
            key = info.name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return {"nsamples": len(keys), "members": members, "first_key": keys[0], "last_key": keys[-1]}


def test_the_shard_index_counts_what_the_tars_hold(curated_run):
    index = json.loads((curated_run / "shards" / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["dropped"] == []
    listed = {s["url"]: s for s in index["shardlist"]}
    tars = sorted((curated_run / "shards").glob("*.tar"))
    assert sorted(listed) == [p.name for p in tars] and len(tars) >= 2
    for path in tars:
        entry = listed[path.name]
        assert {k: entry[k] for k in ("nsamples", "members", "first_key", "last_key")} == tar_numbers(path)
        assert entry["filesize"] == path.stat().st_size and entry["location"] == "shards"
    urls = [str(curated_run / "shards" / s["url"]) for s in index["shardlist"]]
    read = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
    assert index["totals"]["samples"] == read == sum(s["nsamples"] for s in index["shardlist"])


def test_drop_rule_names_the_rule_of_every_reason_a_rule_gives():
    rules = [
        FilterRule(score="motion", min=0.0012),
        FilterRule(score="brightness", min=0.1, max=0.95),
        FilterRule(score="caption_alignment_margin", min=0.01),
        FilterRule(score="camera", drop=["shake", "complex"]),
    ]
    for rule in rules:
        for reason in rule_reasons(rule):
            assert drop_rule(reason) == rule.score, reason
    for code in ("caption_failed", "transition", "internal_error", "unscorable"):
        assert drop_rule(code) == code
    assert drop_rule("duration<2") == "duration" and drop_rule(None) is None


def test_a_foreign_record_with_wrong_types_still_makes_a_row():
    record = {
        "clip_id": "x",
        "scores": {"motion": "fast", "text_boxes": 2.5, "aesthetic": 5, "bogus": 1},
        "caption_metrics": {"coverage": [1], "num_segments": 3.0, "alignment": "no"},
        "camera": ["pan"],
        "caption": {"summary": 7, "segments": [{"start_s": 0, "end_s": "1", "text": "a"}]},
    }
    row = table([manifest_row(record)], CLIP_SCHEMA).to_pylist()[0]
    assert row["scores"]["motion"] is None and row["scores"]["text_boxes"] is None
    assert row["scores"]["aesthetic"] == 5.0 and row["caption_metrics"]["num_segments"] == 3
    assert row["caption_metrics"]["coverage"] is None and row["caption_metrics"]["alignment"] is None
    assert row["camera"] is None and row["caption"]["summary"] is None
    assert row["caption"]["segments"] == [{"start_s": 0.0, "end_s": None, "text": "a"}]


def to_old_layout(part: Path, dest: Path) -> None:
    """A clip manifest part as the layout before struct columns wrote it: dotted names, JSON metrics."""
    t = pq.read_table(part)
    metrics = [json.dumps(m) if m else None for m in t.column("caption_metrics").to_pylist()]
    t = t.drop_columns(["caption_metrics", "drop_rule", "location"]).flatten()
    t = t.append_column("caption_metrics", pa.array(metrics, pa.string()))
    for name in t.column_names:
        if name.startswith("scores.") and pa.types.is_integer(t.schema.field(name).type):
            t = t.set_column(t.column_names.index(name), name, pc.cast(t.column(name), pa.float64()))
    pq.write_table(t.replace_schema_metadata(None), dest)


@pytest.fixture(scope="module")
def old_layout_run(curated_run, tmp_path_factory) -> Path:
    old = tmp_path_factory.mktemp("old-layout") / "out"
    shutil.copytree(curated_run, old, ignore=shutil.ignore_patterns("report"))
    for part in sorted((old / "manifest" / "clips").glob("*.parquet")):
        to_old_layout(part, part)
    return old


def test_the_old_layout_reads_as_the_new_one(curated_run, old_layout_run):
    assert (
        "scores.motion"
        in pq.read_schema(next((old_layout_run / "manifest" / "clips").glob("*.parquet"))).names
    )
    new, old = OutputLayout(str(curated_run)), OutputLayout(str(old_layout_run))
    columns = ["clip_id", "kept", "scores.motion", "scores.text_boxes", "caption.summary", "caption_metrics"]
    rows_new = sorted(new.iter_manifest(new.clips_manifest, columns), key=lambda r: r["clip_id"])
    rows_old = sorted(old.iter_manifest(old.clips_manifest, columns), key=lambda r: r["clip_id"])
    assert rows_new == rows_old and all(isinstance(r["caption_metrics"], dict) for r in rows_new if r["kept"])
    assert new.manifest_columns(new.clips_manifest) >= old.manifest_columns(old.clips_manifest)
    assert score_distributions(new) == score_distributions(old)


def test_the_report_builds_from_the_old_layout_with_the_same_numbers(curated_run, old_layout_run):
    from jobs.report import run_report

    new = json.loads((curated_run / "report" / "report.json").read_text())
    old = run_report(str(old_layout_run), log=lambda *_: None)
    clips = pq.read_table(old_layout_run / "manifest" / "clips").to_pandas()
    assert old["funnel"]["candidate_clips"] == (clips.drop_reason != "transition").sum()
    assert old["funnel"]["kept_clips"] == clips.kept.sum()
    for section in ("funnel", "scores", "captions"):
        assert old[section] == new[section], section
