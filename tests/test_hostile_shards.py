"""Foreign shards are untrusted input: `recaption` and `encode` over one directory of hostile shards
(keys that are long, traverse or carry control characters, records with wrongly typed fields, a member
over the limits, a gzip bomb, a shard cut off mid-sample, a file that is no tar, a file named like a
`pipe:` command) return
normally, write every good sample under a safe key, and give every bad item a manifest row with its
reason; none of it is an internal error. Everything is generated here from a real curated shard."""

import errno
import gzip
import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from conftest import caption_overrides, full_tmpfs
from curation import config
from curation.layout import OutputLayout
from curation.quarantine import TransientError
from curation.shards import MAX_KEY_CHARS, iter_samples, safe_key, shard_failure
from jobs.encode import _write_chunk, run_encode
from jobs.job_configs import EncodeConfig, RecaptionConfig
from jobs.recaption import _write_row, plan_quotas, run_recaption

ROOT = Path(__file__).resolve().parent.parent

LONG = "long-" + "x" * 115  # 120 characters: over USTAR's 100, under the cap, so kept as it is
LONGER_A = "y" * 200 + "-a"  # over the cap; the two share their first 200 characters
LONGER_B = "y" * 200 + "-b"
TRAVERSAL = "../../escape"
CONTROL = "ctl\x1b[31m\x07bell\nkey"
INVALID = {  # key -> the one reason its KEY.json gets
    "width-str": "width: expected an integer, got str '1920'",
    "errors-int": "errors: expected a list of objects, got int 5",
    "json-list": "KEY.json: expected an object, got list of 2; the record is replaced",
    "segment-abc": "caption.segments[0].start_s: expected a finite number, got str 'abc' (item removed)",
}
GOOD = ["good-000", LONG, LONGER_A, LONGER_B, TRAVERSAL, CONTROL, *INVALID]
"""Keys of samples with a clip and a caption: every one of them is written."""
TRUNCATED = ["trunc-000", "trunc-001"]  # the shard breaks off inside the second one's video
PIPED = "piped-name"  # the one sample of the shard whose file name starts with `pipe:`
PWNED = "reelmill-hostile-pwned"
PIPE_NAME = f"pipe:cd;touch {PWNED}.tar"  # run as a command, it would create ~/reelmill-hostile-pwned.tar
MAX_MEMBER = 1_000_000
IO_SETS = [f"io.max_member_bytes={MAX_MEMBER}", f"io.max_sample_bytes={4 * MAX_MEMBER}"]
BOMB_BYTES = 400 << 20  # over the default io.max_member_bytes (256 MB); gzips to about 400 KB


class Zeros:
    """A readable stream of `size` zero bytes, so the bomb is built without holding it."""

    def __init__(self, size: int):
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar of `samples` with the member names exactly as given (tarfile writes `../` as it is)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_gzip_tar(path: Path, name: str, size: int) -> Path:
    """A gzip-compressed tar holding one member of `size` zeros, streamed to disk."""
    with gzip.open(path, "wb", compresslevel=6) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, Zeros(size))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_gzip_tar(tmp_path_factory.mktemp("hostile") / "bomb.tar", "bomb.bin", BOMB_BYTES)


def hostile_samples(clip: dict[str, bytes]) -> list[tuple[str, dict[str, bytes]]]:
    """Every hostile sample, built from one real curated sample (`mp4`, `json`, `txt`, `jpg`)."""
    record = json.loads(clip["json"])

    def with_record(key: str, **changes) -> dict[str, bytes]:
        return clip | {"json": json.dumps(record | {"clip_id": key} | changes).encode()}

    segments = [{"start_s": "abc", "end_s": 1.0, "text": "a bad time"}, *record["caption"]["segments"]]
    samples = [(key, with_record(key)) for key in GOOD if key not in INVALID]
    samples += [
        ("width-str", with_record("width-str", width="1920")),
        ("errors-int", with_record("errors-int", errors=5)),
        ("json-list", clip | {"json": b"[1, 2]"}),
        ("segment-abc", with_record("segment-abc", caption=record["caption"] | {"segments": segments})),
        ("too-big", with_record("too-big") | {"bin": bytes(MAX_MEMBER + 1)}),
        ("novideo", {"txt": clip["txt"], "json": with_record("novideo")["json"]}),
    ]
    return samples


def write_truncated_tar(path: Path, clip: dict[str, bytes]) -> Path:
    """A shard cut off in the middle of its second sample's video."""
    whole = write_tar(path, [(key, clip) for key in TRUNCATED])
    with tarfile.open(whole) as tar:
        video = tar.getmember(f"{TRUNCATED[1]}.mp4")
    path.write_bytes(path.read_bytes()[: video.offset_data + video.size // 2])
    return path


@pytest.fixture(scope="module")
def hostile_dir(bomb, curated_run) -> tuple[Path, dict]:
    """The bomb's directory, with the other hostile shards added; and the curated sample they copy."""
    layout = OutputLayout(str(curated_run))
    clip = next(iter(wds.WebDataset(layout.shard_files()[0], shardshuffle=False)))
    clip = {ext: clip[ext] for ext in ("mp4", "json", "txt", "jpg")}
    assert len(clip["mp4"]) < MAX_MEMBER  # the real clip passes the lowered limit; only `too-big` does not
    directory = bomb.parent
    write_tar(directory / "hostile.tar", hostile_samples(clip))
    write_truncated_tar(directory / "truncated.tar", clip)
    (directory / "notatar.tar").write_bytes(b"this is not a tar file\n" * 100)
    write_tar(directory / PIPE_NAME, [(PIPED, clip)])
    return directory, clip


def expected_keys(*keys: str) -> set[str]:
    return {safe_key(k) for k in keys}


def read_output(out: Path) -> dict[str, dict]:
    """Every written sample, read back with webdataset, by key (no key twice)."""
    samples = {}
    for url in OutputLayout(str(out)).shard_files():
        for sample in wds.WebDataset(url, shardshuffle=False):
            assert sample["__key__"] not in samples
            samples[sample["__key__"]] = sample
    return samples


def assert_member_names_safe(out: Path) -> None:
    """No member name of the output could escape a directory or carry a terminal escape."""
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                assert "/" not in name and ".." not in name.split(".", 1)[0] and not name.startswith(".")
                assert name.isprintable(), name


def assert_keys_sanitised(written: set[str]) -> None:
    assert LONG in written  # safe already: kept as it is (a USTAR writer fails on it)
    assert safe_key(LONGER_A) != safe_key(LONGER_B)
    for key in (LONGER_A, LONGER_B, TRAVERSAL, CONTROL):
        out = safe_key(key)
        assert out in written and out != key and len(out) <= MAX_KEY_CHARS
        assert "/" not in out and "." not in out and out.isprintable()


def manifest(out: Path, which: str) -> list[dict]:
    layout = OutputLayout(str(out))
    return layout.read_manifest(getattr(layout, which)).to_pylist()


def assert_no_command_ran() -> None:
    assert not (Path.home() / f"{PWNED}.tar").exists()


@pytest.fixture(scope="module")
def recaptioned(ray_local, hostile_dir, tiny_vlm, tmp_path_factory):
    directory, _ = hostile_dir
    cfg = config.load(RecaptionConfig, "recaption", "default", [*caption_overrides(tiny_vlm), *IO_SETS])
    out = tmp_path_factory.mktemp("recaptioned") / "out"
    return out, run_recaption([str(directory)], str(out), cfg, log=lambda _: None)


def test_recaption_quarantines_every_bad_item_and_writes_every_good_sample(recaptioned, hostile_dir):
    out, run = recaptioned
    _, clip = hostile_dir
    written = read_output(out)
    assert set(written) == expected_keys(*GOOD, "novideo", PIPED, TRUNCATED[0])
    assert written["good-000"]["mp4"] == clip["mp4"] and written[safe_key(TRAVERSAL)]["mp4"] == clip["mp4"]
    assert_keys_sanitised(set(written))
    assert_member_names_safe(out)
    assert_no_command_ran()

    rows = {r["key"]: r for r in manifest(out, "clips_manifest")}
    assert set(rows) == expected_keys(*GOOD, "novideo", "too-big", PIPED, TRUNCATED[0])
    assert not [r for r in rows.values() if r["error_code"] == "internal_error"]
    assert rows[safe_key(TRAVERSAL)]["input_key"] == TRAVERSAL and rows["good-000"]["input_key"] is None
    assert rows[safe_key(CONTROL)]["input_key"] == CONTROL
    big = rows["too-big"]
    assert (
        big["error_code"] == "member_too_large" and not big["kept"] and "io.max_member_bytes" in big["error"]
    )
    assert rows["novideo"]["error_code"] == "no_video"
    for key, reason in INVALID.items():
        assert rows[key]["invalid_record"] == [reason]
        record = json.loads(written[key]["json"])
        assert {"stage": "input_record", "message": reason} in record["errors"]
        assert record["caption"]["model"]  # captioned all the same
    assert "width" not in json.loads(written["width-str"]["json"])

    shards = {Path(r["uri"]).name: r for r in manifest(out, "shards_manifest")}
    assert shards["bomb.tar"]["error_code"] == "compressed_shard" and shards["bomb.tar"]["status"] == "error"
    assert shards["notatar.tar"]["error_code"] == "unreadable"
    truncated = shards["truncated.tar"]
    assert truncated["error_code"] == "unreadable" and truncated["samples"] == 1  # the one before the cut
    assert shards["hostile.tar"]["status"] == "ok" and shards["hostile.tar"]["samples"] == len(GOOD) + 2
    assert shards[PIPE_NAME]["status"] == "ok" and shards[PIPE_NAME]["samples"] == 1
    counts = run["counts"]
    assert counts["internal_errors"] == 0 and counts["invalid_records"] == len(INVALID)
    assert counts["shard_errors"] == 3 and counts["sample_errors"] == {"member_too_large": 1, "no_video": 1}


@pytest.fixture(scope="module")
def encoded(ray_local, hostile_dir, tiny_wan, tmp_path_factory):
    directory, _ = hostile_dir
    sets = ["frames.num_frames=9", "frames.fps=8.0", "frames.height=64", "frames.width=64"]
    sets += [f"vae.model={tiny_wan}", f"text_encoder.model={tiny_wan}", "device=cpu", *IO_SETS]
    cfg = config.load(EncodeConfig, "encode", "default", [*sets, "shards.clips_per_shard=4"])
    out = tmp_path_factory.mktemp("encoded") / "out"
    return out, run_encode([str(directory)], str(out), cfg, log=lambda _: None)


def test_encode_quarantines_every_bad_item_and_writes_every_good_sample(encoded):
    out, run = encoded
    written = read_output(out)
    assert set(written) == expected_keys(*GOOD, PIPED, TRUNCATED[0])
    assert_keys_sanitised(set(written))
    assert_member_names_safe(out)
    assert_no_command_ran()
    for sample in written.values():
        assert np.load(io.BytesIO(sample["latent.npy"])).dtype == np.float16

    rows = manifest(out, "samples_manifest")
    assert not [r for r in rows if (r["reason"] or "").startswith("internal_error")]
    by_key = {r["key"]: r for r in rows if r["key"] is not None}
    assert {k for k, r in by_key.items() if r["status"] == "ok"} == set(written)
    assert by_key[safe_key(TRAVERSAL)]["input_key"] == TRAVERSAL and by_key["good-000"]["input_key"] is None
    assert by_key["too-big"]["reason"].startswith("member_too_large: member too-big.bin")
    assert by_key["novideo"]["reason"] == "no_video"
    for key, reason in INVALID.items():
        assert by_key[key]["invalid_record"] == [reason]
        assert {"stage": "input_record", "message": reason} in json.loads(written[key]["json"])["errors"]
    segments = json.loads(written["segment-abc"]["json"])["caption"]["segments"]
    assert all(isinstance(s["start_s"], float | int) for s in segments)
    shard_errors = {Path(r["input_shard"]).name: r["reason"] for r in rows if r["status"] == "shard_error"}
    assert set(shard_errors) == {"bomb.tar", "notatar.tar", "truncated.tar"}
    assert shard_errors["bomb.tar"].startswith("compressed_shard:")
    assert shard_errors["notatar.tar"].startswith("unreadable:")
    assert shard_errors["truncated.tar"].startswith("unreadable:")
    counts = run["counts"]
    assert counts["internal_errors"] == 0 and counts["invalid_records"] == len(INVALID)
    assert counts["written"] == len(written)
    assert counts["skipped"] == {"member_too_large": 1, "no_video": 1, "compressed_shard": 1, "unreadable": 2}


def test_limit_plans_around_shards_that_cannot_be_listed(hostile_dir):
    """`--limit` lists keys first: a shard that cannot be listed to its end counts what it has before
    the damage, and is named so that its task still runs and records the damage."""
    directory, _ = hostile_dir
    uris = [str(directory / name) for name in ("notatar.tar", "truncated.tar", "bomb.tar", "hostile.tar")]
    quotas, damaged = plan_quotas(uris, limit=3, fraction=1.0, seed=0)
    assert damaged == set(uris[:3])
    # truncated.tar's second key is listed (its header is whole), though its sample is not readable
    assert quotas == {uris[0]: 0, uris[1]: 2, uris[2]: 0, uris[3]: 1}


PEAK_RSS = """
import json, resource, sys
from curation.safe_tar import TOO_LARGE
from curation.shards import iter_samples
flags = [TOO_LARGE in sample for sample in iter_samples(sys.argv[1], allow_compressed=True)]
print(json.dumps({"too_large": flags, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def read_in_subprocess(shard: Path) -> dict:
    """Iterate a shard in a fresh Python; its flags and its peak resident memory (KB, Linux)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(shard)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_reading_a_gzip_bomb_stays_small_in_memory(bomb, tmp_path):
    """A 400 MB member read (or inflated into one buffer) would add at least 400 MB; skipping it block
    by block adds a few. Bound: 100 MB over the same reader on a tiny compressed shard."""
    tiny = write_gzip_tar(tmp_path / "tiny.tar", "tiny.bin", 1000)
    baseline = read_in_subprocess(tiny)
    peak = read_in_subprocess(bomb)
    assert bomb.stat().st_size < 1 << 20  # the bomb is small on disk
    extra_mb = (peak["peak_kb"] - baseline["peak_kb"]) / 1024
    assert extra_mb < 100, f"reading the bomb took {extra_mb:.0f} MB more than a tiny shard"
    assert baseline["too_large"] == [False] and peak["too_large"] == [True]  # flagged, not dropped


def test_a_local_file_named_like_a_pipe_command_is_read_as_a_file(tmp_path):
    shard = write_tar(tmp_path / PIPE_NAME, [(PIPED, {"txt": b"hello"})])
    assert [s["__key__"] for s in iter_samples(str(shard))] == [PIPED]
    assert_no_command_ran()


def test_an_oversized_extended_header_ends_the_shard_before_it_is_read(tmp_path):
    """tarfile reads a pax header whole before any member check could run: one of 2 MB (a 400 MB one
    gzips to 400 KB) ends the shard as unreadable. The samples before it are read; the one right
    before it is not, as nothing says it was complete."""
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, pax in (("first", {}), ("second", {}), ("third", {"comment": "x" * (2 << 20)})):
            info = tarfile.TarInfo(f"{key}.txt")
            info.size, info.pax_headers = 5, pax
            tar.addfile(info, io.BytesIO(b"hello"))
    samples = iter_samples(str(path))
    assert next(samples)["__key__"] == "first"
    with pytest.raises(tarfile.ReadError, match="extended header") as raised:
        next(samples)
    assert shard_failure(raised.value, "read")["error_code"] == "unreadable"


def test_safe_keys_are_stable_distinct_and_leave_safe_keys_alone():
    assert safe_key("0123abcd-0000010-0000085") == "0123abcd-0000010-0000085"  # a curate clip id
    keys = [
        LONGER_A,
        LONGER_B,
        TRAVERSAL,
        "..__escape",
        CONTROL,
        "a.b",
        "a_b",
        ".hidden",
        "\udcff",
        "x" * 500,
    ]
    safe = [safe_key(k) for k in keys]
    assert len(set(safe)) == len(keys) and safe == [safe_key(k) for k in keys]
    for key in safe:
        assert "/" not in key and "." not in key and not key.startswith("_") and key.isprintable()
        assert 0 < len(key) <= MAX_KEY_CHARS and safe_key(key) == key  # idempotent: a written key stays


def test_transient_failures_are_raised_for_a_retry_not_recorded(tmp_path):
    """A full disk (a real ENOSPC: a full tmpfs) while writing, and a timed-out read, end the task as a
    TransientError, which Ray Data retries; no row, no manifest part and no marker are left."""
    with pytest.raises(TransientError):
        shard_failure(TimeoutError("read timed out"), "read")
    assert (
        shard_failure(FileNotFoundError(errno.ENOENT, "no such shard"), "read")["error_code"] == "unreadable"
    )

    full = tmp_path / "full"
    with full_tmpfs(full, room="0"):
        _writes_to_a_full_disk_are_transient(full)


def _writes_to_a_full_disk_are_transient(full):
    out = full / "encode"
    (out / "shards").mkdir(parents=True)
    sample = {
        "key": "k", "input_shard": "in.tar", "record": {}, "variants": ["a caption"], "invalid": [],
        "latent": np.zeros((4, 2, 2, 2), np.float16), "text": np.zeros((1, 1, 8), np.float16),
        "text_mask": np.ones((1, 1), bool),
    }  # fmt: skip
    row = {
        "task_id": 0,
        "chunk": 0,
        "last": True,
        "encoded": pickle.dumps([sample]),
        "skipped": pickle.dumps([]),
        "io_retries": 0,
    }
    cfg = config.load(EncodeConfig, "encode", "default", [])
    with pytest.raises(TransientError, match="No space left"):
        _write_chunk(row, str(out), cfg)
    assert not list(out.rglob("*.parquet")) and not list(out.rglob("*.tar"))

    out = full / "recaption"
    (out / "manifest" / "shards").mkdir(parents=True)
    row = {
        "task_id": 0,
        "samples": pickle.dumps([("in.tar", {"__key__": "k", "txt": b"a caption"})]),
        "shards": pickle.dumps([{"uri": "in.tar", "task_id": 0, "status": "ok", "samples": 1}]),
        "outcomes": pickle.dumps([]),
        "caption_stats": pickle.dumps({"captioned": 0, "failed": {}}),
        "io_retries": 0,
    }
    with pytest.raises(TransientError, match="No space left"):
        _write_row(row, str(out), config.load(RecaptionConfig, "recaption", "default", []), "fingerprint")
    assert (
        not list(out.rglob("*.parquet")) and not list(out.rglob("*.tar")) and not (out / "_markers").exists()
    )
