"""Probing: every kind of bad input gets its specific reason; awkward valid inputs are read right."""

import pytest

from curation.errors import InputRejected
from curation.probe import probe


@pytest.mark.parametrize(
    "name", ["empty", "text", "random", "head_only", "audio_only", "one_frame", "too_short"]
)
def test_bad_input_is_rejected_with_its_reason(bad_inputs, name):
    path, code = bad_inputs[name]
    with pytest.raises(InputRejected) as rejected:
        probe(str(path), min_duration_s=2.0)
    assert rejected.value.code == code, rejected.value.reason


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(InputRejected) as rejected:
        probe(str(tmp_path / "gone.mp4"), 2.0)
    assert rejected.value.code == "not_found"


def test_plain_video_facts(two_shot_video):
    info = probe(str(two_shot_video), 2.0)
    assert (info.width, info.height, info.fps, info.num_frames) == (240, 180, 25.0, 120)
    assert info.codec == "h264" and not info.has_audio and not info.variable_frame_rate


def test_awkward_inputs_probe(awkward_videos):
    odd = probe(str(awkward_videos["odd"]), 2.0)
    assert (odd.width, odd.height) == (321, 241)
    assert probe(str(awkward_videos["vp9"]), 2.0).codec == "vp9"
    assert probe(str(awkward_videos["mjpeg"]), 2.0).codec == "mjpeg"
    rotated = probe(str(awkward_videos["rotated"]), 2.0)
    assert rotated.rotation in (90, 270) and (rotated.width, rotated.height) == (240, 320)
    vfr = probe(str(awkward_videos["vfr"]), 2.0)
    assert vfr.variable_frame_rate and 10 < vfr.fps < 25


def test_a_playlist_inside_a_local_input_cannot_reach_the_network(tmp_path, two_shot_video):
    """An HLS playlist saved as a local file names a segment on a web server; ffprobe may open only
    `file` for a local input, so the server is never asked and the input is a row, not a fetch."""
    import http.server
    import shutil
    import threading

    from curation import ffmpeg_tools

    segment = tmp_path / "www" / "seg.ts"
    segment.parent.mkdir()
    ffmpeg_tools.run(
        ["ffmpeg", "-v", "error", "-i", str(two_shot_video), "-c", "copy", "-f", "mpegts", str(segment)], 60
    )
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(segment.parent), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/seg.ts"
        playlist = tmp_path / "innocent.m3u8"
        playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:4.8,\n{url}\n#EXT-X-ENDLIST\n")
        with pytest.raises(InputRejected):
            probe(str(playlist), min_duration_s=1.0)
        assert requests == []
        # the same playlist with the web protocols allowed does fetch it: the check above could fail
        ffmpeg_tools.run(
            [
                shutil.which("ffprobe"),
                "-v",
                "error",
                "-protocol_whitelist",
                f"file,{ffmpeg_tools.WEB_PROTOCOLS}",
                str(playlist),
            ],
            60,
        )
        assert requests
    finally:
        server.shutdown()
