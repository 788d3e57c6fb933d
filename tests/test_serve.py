"""`reelmill report OUT --serve` on a real curate run (kept and dropped clips in several shards): every
member streamed out of the tars by offset equals what tarfile and webdataset read, Range requests are
answered as a `<video>` needs, the member index is built once and rebuilt for a rewritten shard, nothing
outside the report and the shards can be reached, contact sheets are drawn on request, and the command
starts, answers and stops cleanly."""

import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from captioning.report.serve import start_server
from conftest import tar_bytes
from curation import config, storage, synthetic
from curation.synthetic import Shot, VideoSpec
from jobs.curate import run_curate
from jobs.job_configs import CurateJobConfig

REELMILL = str(Path(sys.executable).with_name("reelmill"))
STILL = "testsrc2=size={s}:rate={r},trim=end_frame=1,loop=loop=-1:size=1,setpts=N/({r})/TB"
TYPES = {"mp4": "video/mp4", "jpg": "image/jpeg", "json": "application/json", "txt": "text/plain"}


@pytest.fixture(scope="module")
def out(ray_local, multi_shot_video, tmp_path_factory) -> Path:
    """A curate run whose still video is dropped by the motion rule and kept in OUT/dropped/."""
    videos = tmp_path_factory.mktemp("serve-videos")
    (videos / multi_shot_video.name).symlink_to(multi_shot_video)
    synthetic.make_video(videos / "still.mp4", VideoSpec([Shot(STILL, 75)], 320, 240))
    out = tmp_path_factory.mktemp("serve-run") / "out"
    overrides = [
        "scoring.aesthetic.enabled=false",
        "scoring.text.enabled=false",
        "captioning.enabled=false",
        "filters.rules=[{score: motion, min: 0.0012}]",
        "shards.keep_dropped=true",
        "shards.max_clips=2",
        "input.videos_per_task=1",
        "report.enabled=false",
    ]
    run_curate([str(videos)], str(out), config.load(CurateJobConfig, "curate", "default", overrides))
    # the pages themselves are the report's business (tests/test_report.py, tests/test_clip_browser.py);
    # here they are files to serve, and their being there lets `--serve` start without building them
    (out / "report" / "browser").mkdir(parents=True)
    (out / "report" / "clips.html").write_text("<!doctype html><title>clips</title><p>the clip browser")
    (out / "report" / "index.html").write_text("<!doctype html><title>report</title><p>the quality report")
    (out / "report" / "browser" / "index.json").write_text('{"clips": []}')
    return out


@pytest.fixture(scope="module")
def server(out):
    with start_server(str(out)) as server:
        yield server


def tar_members(path: Path) -> dict[str, bytes]:
    """Every regular member of a tar, read by tarfile itself."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def shards(out: Path) -> list[tuple[str, Path]]:
    return [(loc, p) for loc in ("shards", "dropped") for p in sorted((out / loc).glob("*.tar"))]


def get(port: int, path: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of one request, the path sent exactly as given (no client normalizing)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def a_video(out: Path, location: str = "shards") -> tuple[str, str, bytes]:
    """(shard name, member name, bytes) of the first mp4 member in `location`."""
    for loc, path in shards(out):
        if loc == location:
            for name, data in tar_members(path).items():
                if name.endswith(".mp4"):
                    return path.name, name, data
    raise AssertionError(f"no mp4 in {location}")


def test_every_member_of_kept_and_dropped_shards_is_served_byte_for_byte(out, server):
    found = shards(out)
    assert {loc for loc, _ in found} == {"shards", "dropped"}, "the run should keep and drop clips"
    assert len([1 for loc, _ in found if loc == "shards"]) >= 2, "several kept shards (shards.max_clips=2)"
    served = 0
    for location, path in found:
        by_webdataset = {
            f"{s['__key__']}.{ext}": data
            for s in wds.WebDataset(str(path), shardshuffle=False)
            for ext, data in s.items()
            if not ext.startswith("__")
        }
        members = tar_members(path)
        assert set(by_webdataset) == set(members) and members
        for name, data in members.items():
            assert by_webdataset[name] == data
            status, headers, body = get(server.port, f"/media/{location}/{path.name}/{name}")
            assert status == 200, (name, body[:200])
            assert body == data
            assert int(headers["content-length"]) == len(data)
            assert headers["accept-ranges"] == "bytes"
            assert headers["content-type"].startswith(TYPES[name.rsplit(".", 1)[1]])
            served += 1
    assert served == sum(len(tar_members(p)) for _, p in found)
    shard, name, data = a_video(out)
    status, headers, body = get(server.port, f"/media/shards/{shard}/{name}", method="HEAD")
    assert (status, body, int(headers["content-length"])) == (200, b"", len(data))


def test_range_requests_return_the_slices_a_video_element_asks_for(out, server):
    shard, name, data = a_video(out, "dropped")
    url, n = f"/media/dropped/{shard}/{name}", len(data)
    assert n > 2000
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=100-1099": (100, 1099),
        f"bytes={n - 10}-": (n - 10, n - 1),
        "bytes=1000-": (1000, n - 1),
        "bytes=-500": (n - 500, n - 1),
        f"bytes=-{n + 50}": (0, n - 1),  # a suffix longer than the member: all of it
        f"bytes=5-{n + 1000}": (5, n - 1),  # an end past the member: up to its end
    }
    for header, (first, last) in cases.items():
        status, headers, body = get(server.port, url, {"Range": header})
        assert status == 206, header
        assert headers["content-range"] == f"bytes {first}-{last}/{n}", header
        assert body == data[first : last + 1] and int(headers["content-length"]) == last - first + 1
    for header in (f"bytes={n}-", f"bytes={n + 5}-{n + 9}", "bytes=-0"):
        status, headers, body = get(server.port, url, {"Range": header})
        assert status == 416, header
        assert headers["content-range"] == f"bytes */{n}"
    for ignored in (
        "bytes=0-1,5-9",
        "bytes=9-5",
        "items=0-5",
        "bytes=x-",
    ):  # whole member, as RFC 9110 allows
        status, headers, body = get(server.port, url, {"Range": ignored})
        assert (status, body) == (200, data), ignored
    _, headers, _ = get(server.port, url, method="HEAD")
    status, _, body = get(server.port, url, {"Range": "bytes=0-9", "If-Range": headers["etag"]})
    assert (status, body) == (206, data[:10])
    status, _, body = get(server.port, url, {"Range": "bytes=0-9", "If-Range": '"another-version"'})
    assert (status, body) == (200, data)


def test_member_index_is_built_once_kept_on_disk_and_rebuilt_for_a_rewritten_shard(out, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_state"))
    found = shards(copy)
    with start_server(str(copy)) as first:
        for location, path in found:
            name = next(iter(tar_members(path)))
            for _ in range(3):  # the same shard again and again: indexed once
                assert get(first.port, f"/media/{location}/{path.name}/{name}")[0] == 200
        assert first.members.builds == len(found)
    caches = {p: p.stat().st_mtime_ns for p in (copy / "_state" / "members").rglob("*.json")}
    assert sorted(p.relative_to(copy / "_state" / "members").as_posix() for p in caches) == sorted(
        f"{loc}/{path.name}.json" for loc, path in found
    )
    cached = json.loads((copy / "_state" / "members" / found[0][0] / f"{found[0][1].name}.json").read_text())
    assert [m[0] for m in cached["members"]] == list(tar_members(found[0][1]))

    with start_server(str(copy)) as second:  # a new process's server: the files on disk, no tar read
        for location, path in found:
            for name, data in tar_members(path).items():
                assert get(second.port, f"/media/{location}/{path.name}/{name}")[2] == data
        assert second.members.builds == 0
        assert {p: p.stat().st_mtime_ns for p in caches} == caches

        # a rerun rewrites a shard: other members, at other offsets
        location, path = found[0]
        old = tar_members(path)
        rewritten = [("rewritten-clip", {"txt": b"first now\n", "json": b"{}"})]
        rewritten += [(name.rsplit(".", 1)[0], {name.rsplit(".", 1)[1]: data}) for name, data in old.items()][
            ::-1
        ]
        path.write_bytes(tar_bytes(rewritten))
        for name, data in old.items():
            assert get(second.port, f"/media/{location}/{path.name}/{name}")[2] == data
        assert get(second.port, f"/media/{location}/{path.name}/rewritten-clip.txt")[2] == b"first now\n"
        assert second.members.builds == 1
        cache = copy / "_state" / "members" / location / f"{path.name}.json"
        assert json.loads(cache.read_text())["members"][0][0] == "rewritten-clip.txt"


def test_damaged_and_compressed_shards_serve_what_can_be_served(tmp_path):
    import gzip

    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"job": "curate", "config": {}}))
    long_key = "k" * 150  # a name over the 100 bytes of a USTAR header: a pax record holds it
    whole = tar_bytes([("a", {"mp4": b"A" * 5000}), ("b", {"mp4": b"B" * 5000})])
    (out / "shards" / "cut.tar").write_bytes(whole[:7000])  # b.mp4 cut off
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"{long_key}.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"pax"))
    (out / "shards" / "pax.tar").write_bytes(buffer.getvalue())
    (out / "shards" / "zipped.tar").write_bytes(gzip.compress(whole))
    (out / "shards" / "noise.tar").write_bytes(os.urandom(4096))
    with start_server(str(out)) as server:
        assert get(server.port, "/media/shards/cut.tar/a.mp4")[2] == b"A" * 5000
        assert get(server.port, "/media/shards/cut.tar/b.mp4")[0] == 404
        assert get(server.port, f"/media/shards/pax.tar/{long_key}.txt")[2] == b"pax"
        status, _, body = get(server.port, "/media/shards/zipped.tar/a.mp4")
        assert status == 422 and b"gzip-compressed" in body
        assert get(server.port, "/media/shards/noise.tar/a.mp4")[0] == 404


def test_paths_outside_the_report_and_shards_are_refused(out, server):
    run_json = (out / "run.json").read_bytes()
    shard, name, _ = a_video(out)
    refused = {
        "/media/shards/../../run.json": 400,
        "/media/shards/%2e%2e/%2e%2e/run.json": 400,
        "/media/shards/%2E%2E/run.json": 400,
        "/../run.json": 400,
        "/%2e%2e/run.json": 400,
        "/..%2frun.json": 400,
        "/media%2f..%2f..%2frun.json": 400,
        f"/media/shards/{shard}/..%2f..%2frun.json": 400,
        "/media/shards/%2e%2e%2frun.json/x": 400,
        "/media/%2e/run.json/x": 400,
        "/run.json": 404,  # not under OUT/report/
        "/media/manifest/clips/x": 404,
        "/media/_state/spec.json/x": 404,
        "/media/shards/run.json/x.mp4": 404,
        "/media/shards/no-such-shard.tar/x.mp4": 404,
        f"/media/shards/{shard}/no-such-key.mp4": 404,
        f"/media/shards/{shard}": 404,
        f"/sheet/shards/{shard}/no-such-key.jpg": 404,
        f"/sheet/shards/{shard}/{name}": 404,
        "/no-such-file.html": 404,
    }
    for path, expected in refused.items():
        status, _, body = get(server.port, path)
        assert status == expected, (path, status, body[:200])
        assert run_json not in body
    status, headers, body = get(server.port, "/serve.json")
    assert status == 200 and headers["content-type"] == "application/json"
    info = json.loads(body)
    assert info["media"] is True and sorted(info["locations"]) == ["dropped", "shards"]


def test_report_files_are_served_and_the_root_is_the_clip_browser(out, server):
    for path, name, kind in [
        ("/", "clips.html", "text/html"),
        ("/clips.html", "clips.html", "text/html"),
        ("/index.html", "index.html", "text/html"),
        ("/browser/index.json", "browser/index.json", "application/json"),
    ]:
        status, headers, body = get(server.port, path)
        assert (status, body) == (200, (out / "report" / name).read_bytes()), path
        assert headers["content-type"].startswith(kind)
    status, headers, body = get(server.port, "/browser/index.json", {"Range": "bytes=1-7"})
    assert (status, body) == (206, b'"clips"')


def test_contact_sheet_is_drawn_from_the_served_clip(out, server):
    shard, name, _ = a_video(out, "dropped")
    url = f"/sheet/dropped/{shard}/{name.removesuffix('.mp4')}.jpg"
    status, headers, body = get(server.port, url)
    assert status == 200, body[:300]
    assert headers["content-type"] == "image/jpeg" and int(headers["content-length"]) == len(body)
    sheet = Image.open(io.BytesIO(body))
    assert sheet.format == "JPEG" and sheet.width >= 256 and sheet.height >= 100
    sheet.verify()
    started = time.monotonic()
    assert get(server.port, url)[2] == body  # the cached one
    assert time.monotonic() - started < 1.0


def test_a_client_that_leaves_mid_stream_costs_no_traceback(out, tmp_path, capfd, caplog):
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_state", "shards", "dropped"))
    (copy / "shards").mkdir()
    big = os.urandom(48 << 20)  # more than the sockets between us buffer
    (copy / "shards" / "big.tar").write_bytes(tar_bytes([("big", {"mp4": big})]))
    with start_server(str(copy)) as server:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"GET /media/shards/big.tar/big.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        time.sleep(0.5)
        status, _, body = get(server.port, "/media/shards/big.tar/big.mp4", {"Range": "bytes=-3"})
        assert (status, body) == (206, big[-3:])
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_members_are_served_from_an_object_store(out, s3_server):
    root = s3_server.bucket("serve") + "/out"
    shard, name, data = a_video(out)
    for rel in ("run.json", f"shards/{shard}"):
        storage.write_bytes(storage.join(root, *rel.split("/")), (out / rel).read_bytes())
    with start_server(root) as server:
        status, _, body = get(server.port, f"/media/shards/{shard}/{name}", {"Range": "bytes=10-"})
        assert (status, body) == (206, data[10:])
        assert get(server.port, f"/media/shards/{shard}/{name}")[2] == data
    assert storage.exists(storage.join(root, "_state", "members", "shards", f"{shard}.json"))


def launch(*args: str) -> subprocess.Popen:
    """`reelmill report ARGS` with its log on a pipe, started as from a terminal: with SIGINT's default
    action, whatever this process has (a shell starts a background job with SIGINT ignored, and a child
    inherits that, not a handler). PYTHONFAULTHANDLER, so that a hung one, sent SIGABRT, writes every
    thread's stack into that log."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [REELMILL, "report", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_for_url(proc: subprocess.Popen, lines: list[str], timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"exited with {proc.wait()} before serving:\n{''.join(lines)}")
        lines.append(line)
        if "http://" in line:
            return line[line.index("http://") :].split()[0]
    raise AssertionError("no URL printed:\n" + "".join(lines))


def run_until_stopped(proc: subprocess.Popen, lines: list[str], stop: int, check) -> list[str]:
    """Wait for the server's URL, `check(port)`, send `stop`; the whole log, once it exited 0."""
    try:
        url = wait_for_url(proc, lines)
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        assert url == f"http://127.0.0.1:{port}/"
        assert "Ctrl-C" in lines[-1]
        assert json.loads(get(port, "/serve.json")[2])["media"] is True
        check(port)
        proc.send_signal(stop)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the stacks of a server that does not stop, into its log
            rest, _ = proc.communicate(timeout=60)
            raise AssertionError(f"still running 60 s after signal {stop}:\n{''.join(lines)}{rest}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += rest.splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)
    log = [line.rstrip("\n") for line in lines if line.strip()]
    assert len(log) == len(set(log)), "duplicated lines:\n" + "\n".join(log)
    assert not any("Traceback" in line or " - - [" in line for line in log), "\n".join(log)
    return log


def test_the_command_serves_the_report_there_until_ctrl_c(out):
    page = (out / "report" / "clips.html").read_bytes()
    shard, name, data = a_video(out)

    def check(port: int) -> None:
        assert get(port, f"/media/shards/{shard}/{name}")[2] == data
        assert get(port, "/")[2] == page  # served as it was: not rebuilt
        # the port is taken now: a second server says so and exits 2
        taken = subprocess.run(
            [REELMILL, "report", str(out), "--serve", "--port", str(port)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert taken.returncode == 2, taken.stdout + taken.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr

    log = run_until_stopped(launch(str(out), "--serve", "--port", "0"), [], signal.SIGINT, check)
    assert len(log) == 1, log  # the one line with the URL
    assert (out / "report" / "clips.html").read_bytes() == page


def test_the_command_builds_a_missing_report_first_and_stops_on_sigterm(out, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("_state", "report"))

    def check(port: int) -> None:
        assert (copy / "report" / "clips.html").is_file() and (copy / "report" / "index.html").is_file()
        assert get(port, "/")[2] == (copy / "report" / "clips.html").read_bytes()

    run_until_stopped(launch(str(copy), "--serve", "--port", "0"), [], signal.SIGTERM, check)


def test_bad_out_exits_2_with_the_report_error(tmp_path):
    done = subprocess.run(
        [REELMILL, "report", str(tmp_path / "nothing-here"), "--serve", "--port", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "reelmill report: error:" in done.stderr and "holds no run" in done.stderr
