"""Storage: an output appears whole under its name or not at all, locally, on S3 (moto's server, a real
HTTP endpoint) and on a filesystem only fsspec opens (`memory://`); a stalled endpoint fails within the
timeouts after a bounded number of counted retries; the settings reach processes started later."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from conftest import ROOT
from curation import storage
from curation.curate_config import IOConfig
from curation.shards import TaskShardWriter, iter_samples


@pytest.fixture
def settings_restored():
    """The storage settings and their environment variables as they were before the test."""
    saved = storage.io_settings()
    env = {var: os.environ.get(var) for var in storage.ENV_VARS.values()}
    yield
    storage.configure(**saved)
    for var, value in env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture(params=["local", "s3", "memory"])
def root(request, tmp_path) -> str:
    """An output directory on the local disk, on S3, then on fsspec's in-memory filesystem (a scheme
    pyarrow does not open itself: the fsspec branch, as gcsfs or adlfs would take)."""
    if request.param == "local":
        return str(tmp_path / "out")
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}/out"
    return request.getfixturevalue("s3_server").bucket("clean") + "/out"


def memory_files(uri: str) -> dict[str, bytes]:
    """Everything fsspec's memory filesystem holds under `uri` (a memory:// URI), by path, read through
    fsspec itself rather than through the code under test."""
    import fsspec

    fs = fsspec.filesystem("memory")
    return {path: fs.cat_file(path) for path in fs.find(uri)}


def s3_keys(bucket_uri: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket_uri[len("s3://") :])
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


class TcpServer:
    """A loopback TCP server that accepts every connection: the first `stall` are held open and never
    answered (an endpoint that hangs), the rest are forwarded to `target_port` when it is given."""

    def __init__(self, stall: int, target_port: int | None = None):
        self.stall, self.target_port = stall, target_port
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listening socket closed
            while True:
                conn, _ = self._sock.accept()
                self.accepted += 1
                if self.accepted <= self.stall or self.target_port is None:
                    self._held.append(conn)
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def stalled():
    server = TcpServer(stall=10**9)
    yield server
    server.close()


# -- local -------------------------------------------------------------------------------------------------


def test_a_failed_local_output_leaves_neither_its_file_nor_a_temporary(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError, match="midway"), storage.atomic_output(str(target)) as f:
        f.write(b"partial")
        raise RuntimeError("midway")
    assert list((tmp_path / "sub").iterdir()) == []


def test_two_outputs_open_on_one_path_write_to_different_temporary_files(tmp_path):
    target = tmp_path / "same.bin"
    with storage.atomic_output(str(target)) as first, storage.atomic_output(str(target)) as second:
        first.write(b"first")
        second.write(b"second")
        temporaries = [p.name for p in tmp_path.iterdir()]
        assert len(temporaries) == 2 and all(".tmp-" in name for name in temporaries), temporaries
    assert target.read_bytes() == b"first"  # the outer block exits last
    assert list(tmp_path.iterdir()) == [target]


def test_a_local_output_is_on_disk_before_it_gets_its_name_and_the_name_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(("fsync", kind, os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.json"
    storage.write_bytes(str(target), b"{}")
    assert [call[:2] for call in calls] == [("fsync", "file"), ("replace", calls[0][2]), ("fsync", "dir")]
    assert ".tmp-" in calls[0][2] and calls[1][2] == str(target) and calls[2][2] == str(tmp_path)


# -- local and S3 ------------------------------------------------------------------------------------------


def test_a_clean_write_publishes_what_its_writer_counted(root):
    data = os.urandom(3 << 20)
    uri = storage.join(root, "part.bin")
    with storage.atomic_output(uri) as f:
        for start in range(0, len(data), 1 << 20):
            f.write(data[start : start + (1 << 20)])
        f.flush()
    back = storage.read_bytes(uri)
    assert back == data
    assert (f.size, f.sha256) == (len(back), hashlib.sha256(back).hexdigest())
    assert storage.write_bytes(storage.join(root, "small.json"), b"{}") == {
        "bytes": 2,
        "sha256": hashlib.sha256(b"{}").hexdigest(),
    }
    assert storage.file_sizes(root) == {"part.bin": len(data), "small.json": 2}
    assert storage.file_sha256(uri) == f.sha256
    assert storage.file_sizes(storage.join(root, "missing")) == {}
    assert storage.list_files(root) == [storage.join(root, "part.bin"), storage.join(root, "small.json")]


def test_a_shard_writer_publishes_parts_that_read_back(root):
    samples = {f"clip-{i}": {"mp4": os.urandom(1000 + i), "json": b"{}"} for i in range(3)}
    with TaskShardWriter(root, task_id=3, max_clips=2, max_bytes=1 << 30) as writer:
        for key, members in samples.items():
            writer.place(sum(len(m) for m in members.values()))
            writer.write(key, members)
    assert set(storage.file_sizes(root)) == set(writer.written) and len(writer.written) == 2
    back = {}
    for name in writer.written:
        for sample in iter_samples(storage.join(root, name)):
            back[sample.pop("__key__")] = sample
    assert back == samples


def test_a_missing_file_is_not_retried(root):
    before = storage.io_retries()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing.bin"))
    assert storage.io_retries() == before


# -- S3 ----------------------------------------------------------------------------------------------------


# TaskShardWriter leaves a failed part's tar unclosed; its stream flushes in __del__ into the closed output
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_shard_failing_midway_on_s3_leaves_no_object_and_no_upload(s3_server):
    bucket = s3_server.bucket("midway")
    out = bucket + "/shards"
    # over 12 MiB: pyarrow uploads it in parts, and completes the upload when the stream closes
    with pytest.raises(RuntimeError, match="midway"), TaskShardWriter(out, 0, 100, 1 << 30) as writer:
        for i in range(4):
            writer.write(f"clip-{i}", {"mp4": os.urandom(4 << 20)})
        raise RuntimeError("midway")
    keys = s3_keys(bucket)
    assert not [k for k in keys if k.endswith(".tar") or ".tmp-" in k], keys
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket[len("s3://") :])
    assert not uploads.get("Uploads"), uploads["Uploads"]


@pytest.mark.parametrize("endpoint_from", ["query", "environment"])
def test_a_stalled_endpoint_fails_within_the_timeouts_after_bounded_retries(
    endpoint_from, stalled, settings_restored, monkeypatch, request
):
    if endpoint_from == "environment":  # started first: monkeypatch must restore the variables it sets
        request.getfixturevalue("s3_server")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    timeout, attempts, backoff = 1.0, 2, 0.1
    storage.configure(
        request_timeout_s=timeout, connect_timeout_s=timeout, attempts=attempts, backoff_s=backoff
    )
    if endpoint_from == "environment":
        # a filesystem for this bucket, cached while the endpoint was moto's, must not be reused
        with pytest.raises(FileNotFoundError):
            storage.read_bytes("s3://stall-bucket/key")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{stalled.port}")
        uri = "s3://stall-bucket/key"
    else:
        uri = f"s3://stall-bucket/key?endpoint_override=127.0.0.1:{stalled.port}&scheme=http"
    before, stats = storage.io_retries(), storage.io_stats()
    started = time.monotonic()
    with pytest.raises(OSError) as failed:
        storage.read_bytes(uri)
    elapsed = time.monotonic() - started
    assert storage.is_transient_io(failed.value), failed.value
    # pyarrow tries each request `attempts` times within each of ours, each try on a new connection that
    # waits out the request timeout (connecting is instant), and backs off for up to a second in between
    tries = attempts * attempts
    bound = tries * (timeout + 1) + sum(backoff * 2**k * 1.25 for k in range(attempts))
    assert timeout <= elapsed < bound
    assert stalled.accepted == tries
    assert storage.io_retries() - before == attempts - 1
    after = storage.io_stats()
    assert after["gave_up"] == stats["gave_up"] + 1
    assert after["by_op"]["read_bytes"] == stats["by_op"].get("read_bytes", 0) + attempts - 1


def test_a_stall_that_passes_is_retried_until_the_read_succeeds(s3_server, settings_restored):
    attempts = 2
    storage.configure(request_timeout_s=1, connect_timeout_s=1, attempts=attempts, backoff_s=0.1)
    bucket = s3_server.bucket("flaky")
    storage.write_bytes(bucket + "/key", b"payload")  # through moto directly: a filesystem without the proxy
    moto_port = int(s3_server.endpoint.rsplit(":", 1)[1])
    proxy = TcpServer(stall=attempts, target_port=moto_port)  # pyarrow's tries within our first attempt
    try:
        before = storage.io_retries()
        uri = f"{bucket}/key?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
        assert storage.read_bytes(uri) == b"payload"
        assert storage.io_retries() - before == 1
    finally:
        proxy.close()


def test_s3_errors_that_mean_try_again_are_transient_and_others_are_not():
    prefix = "When reading information for key 'shard-503.tar' in bucket 'b': "
    assert storage.is_transient_io(OSError(prefix + "AWS Error SLOW_DOWN during GetObject operation: Reduce"))
    assert storage.is_transient_io(OSError(prefix + "AWS Error UNKNOWN (HTTP status 503) during HeadObject"))
    assert storage.is_transient_io(OSError(prefix + "AWS Error INTERNAL_FAILURE during PutObject operation"))
    assert not storage.is_transient_io(
        OSError(prefix + "AWS Error ACCESS_DENIED during HeadObject operation")
    )
    assert not storage.is_transient_io(FileNotFoundError(prefix + "Path does not exist"))


def test_an_upload_shorter_than_what_was_written_is_not_published(s3_server):
    bucket = s3_server.bucket("short")
    short = pytest.raises(OSError, match="holds 3 bytes, 4 were written")
    with short as failed, storage.atomic_output(bucket + "/out/part.bin") as f:
        f.write(b"abc")
        f.size += 1  # as if a write had been lost on its way to the store
    assert storage.is_transient_io(failed.value)  # the task is tried again
    assert not [k for k in s3_keys(bucket) if k.endswith(".bin") or ".tmp-" in k], s3_keys(bucket)


# -- fsspec (memory://) ------------------------------------------------------------------------------------


def test_a_scheme_pyarrow_lacks_is_opened_through_fsspec_and_published_whole():
    import pyarrow.fs as pafs

    root = f"memory://{uuid.uuid4().hex}/out"
    fs, path = storage.filesystem(root + "/a.bin")
    assert not storage.is_local(root)
    assert isinstance(fs, pafs.PyFileSystem) and isinstance(fs.handler, pafs.FSSpecHandler)
    assert path.endswith("/out/a.bin")
    data = os.urandom(100_000)
    with storage.atomic_output(root + "/a.bin") as f:
        f.write(data[:50_000])
        assert not memory_files(root + "/a.bin")  # nothing under the final name while writing
        f.write(data[50_000:])
    assert memory_files(root) == {path: data}  # the final name, whole, and no temporary left
    assert storage.exists(root + "/a.bin") and storage.is_file(root + "/a.bin")
    assert storage.size(root + "/a.bin") == len(data) and not storage.is_file(root)
    with storage.local_copy(root + "/a.bin") as local:  # what ffmpeg is given for a remote input
        assert storage.is_local(local) and Path(local).read_bytes() == data
    assert not os.path.exists(local)
    storage.delete(root + "/a.bin")
    assert memory_files(root) == {} and not storage.exists(root + "/a.bin")


def test_a_failed_block_on_fsspec_leaves_neither_the_output_nor_its_temporary():
    root = f"memory://{uuid.uuid4().hex}/out"
    storage.write_bytes(root + "/kept.json", b"{}")
    with pytest.raises(RuntimeError, match="midway"), storage.atomic_output(root + "/part.bin") as f:
        f.write(b"partial")
        raise RuntimeError("midway")
    assert list(memory_files(root)) == [storage.filesystem(root + "/kept.json")[1]]
    storage.delete_dir(root)
    assert memory_files(root) == {} and storage.list_files(root) == []


# -- settings ----------------------------------------------------------------------------------------------


def test_configure_exports_the_settings_to_processes_started_after(settings_restored):
    storage.configure(request_timeout_s=7, connect_timeout_s=3, attempts=5, backoff_s=0.25)
    wanted = {"request_timeout_s": 7.0, "connect_timeout_s": 3.0, "attempts": 5, "backoff_s": 0.25}
    assert storage.io_settings() == wanted
    assert os.environ["REELMILL_IO_ATTEMPTS"] == "5" and os.environ["REELMILL_IO_REQUEST_TIMEOUT_S"] == "7.0"
    code = "import json; from curation import storage; print(json.dumps(storage.io_settings()))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(child.stdout) == wanted
    storage.configure_from(IOConfig(request_timeout_s=30, connect_timeout_s=5, attempts=2, backoff_s=1))
    assert storage.io_settings() == {
        "request_timeout_s": 30,
        "connect_timeout_s": 5,
        "attempts": 2,
        "backoff_s": 1,
    }
