"""The split stage without Ray: cuts found to the frame, clips cut to the frame, bad inputs as rows."""

import io
from fractions import Fraction

import numpy as np
import pytest

from conftest import MULTI_SHOT, decode_frames, probe_video
from curation.clips import plan_clips
from curation.curate_config import ClipConfig, CurateConfig, SceneConfig
from curation.inputs import Task
from curation.probe import probe
from curation.scenes import detect_shots
from curation.splitter import ClipSplitter


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_every_boundary_is_found_within_one_frame(multi_shot_video, detector):
    info = probe(str(multi_shot_video), 2.0)
    scenes = detect_shots(str(multi_shot_video), info, SceneConfig(detector=detector))
    assert scenes.decoded_frames == MULTI_SHOT.num_frames
    assert len(scenes.cuts) == len(MULTI_SHOT.boundaries), scenes.cuts
    for found, truth in zip(scenes.cuts, MULTI_SHOT.boundaries, strict=True):
        assert abs(found - truth) <= 1, (scenes.cuts, MULTI_SHOT.boundaries)


def test_short_shot_is_dropped_and_no_kept_clip_straddles_a_cut(multi_shot_video):
    info = probe(str(multi_shot_video), 2.0)
    scenes = detect_shots(str(multi_shot_video), info, SceneConfig())
    spans = plan_clips(scenes.shots, info.fps, ClipConfig())
    flash = [s for s in spans if s.start_frame <= 130 and s.end_frame >= 138]
    assert len(flash) == 1 and not flash[0].kept and flash[0].drop_reason == "duration<2"
    kept = [s for s in spans if s.kept]
    assert kept
    for span in kept:
        for cut in MULTI_SHOT.boundaries:
            assert span.end_frame <= cut or span.start_frame >= cut, (span, cut)


def test_long_shots_split_into_even_windows_and_ends_are_trimmed():
    spans = plan_clips(
        [(0, 300), (300, 340)], fps=25.0, cfg=ClipConfig(min_clip_s=1.0, max_clip_s=5.0, trim_s=0.12)
    )
    windows = [s for s in spans if s.shot_index == 0]
    assert [(s.start_frame, s.end_frame) for s in windows] == [(3, 101), (101, 199), (199, 297)]
    assert all(s.kept for s in windows)
    tail = [s for s in spans if s.shot_index == 1]
    assert [(s.start_frame, s.end_frame, s.kept) for s in tail] == [(303, 337, True)]


@pytest.fixture(scope="module")
def split_multi(multi_shot_video):
    cfg = CurateConfig()
    return ClipSplitter(cfg).run(Task(0, (str(multi_shot_video),)))


def test_clips_are_cut_to_the_frame(multi_shot_video, split_multi):
    source = decode_frames(multi_shot_video)
    kept = [c for c in split_multi.clips if c.kept]
    assert len(kept) == 4
    for record in kept:
        clip = decode_frames(_to_file(split_multi.media[record.clip_id]["mp4"]))
        assert len(clip) == record.num_frames == record.source_end_frame - record.source_start_frame
        errors = {}
        for offset in (-1, 0, 1):
            start = record.source_start_frame + offset
            errors[offset] = float(np.mean((source[start : start + len(clip)] - clip) ** 2))
        assert min(errors, key=errors.get) == 0, errors


def _to_file(data: bytes) -> str:
    """Clip bytes to a temporary file ffmpeg can read (removed with the session's temp dir)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mp4", delete=False, dir=tempfile.gettempdir()) as f:
        f.write(data)
    return f.name


def test_records_and_thumbnails(split_multi):
    from PIL import Image

    for record in split_multi.clips:
        assert record.source_end_s == pytest.approx(record.source_end_frame / 25.0)
        if record.kept:
            assert (record.width, record.height, record.codec, record.fps) == (320, 240, "h264", 25.0)
            thumb = Image.open(io.BytesIO(split_multi.media[record.clip_id]["jpg"]))
            assert thumb.size == (320, 240)
    assert split_multi.videos[0]["num_shots"] == 5
    assert split_multi.videos[0]["num_kept"] == 4


def test_bad_inputs_do_not_take_good_ones_down(bad_inputs, two_shot_video):
    uris = [str(p) for p, _ in bad_inputs.values()] + [str(two_shot_video)]
    result = ClipSplitter(CurateConfig()).run(Task(3, tuple(uris)))
    rows = {r["uri"]: r for r in result.videos}
    assert len(rows) == len(uris)
    for path, code in bad_inputs.values():
        row = rows[str(path)]
        assert row["status"] == "error" and row["error_code"] == code, row
        assert row["error"].startswith(code)
    assert rows[str(two_shot_video)]["status"] == "ok"
    kept = [c for c in result.clips if c.kept]
    assert len(kept) == 2 and all(c.source == str(two_shot_video) for c in kept)
    assert set(result.media) == {c.clip_id for c in kept}


@pytest.fixture(scope="module")
def split_awkward(awkward_videos):
    uris = tuple(str(p) for p in awkward_videos.values())
    return ClipSplitter(CurateConfig()).run(Task(0, uris))


def _kept(result, path) -> list:
    return [c for c in result.clips if c.source == str(path) and c.kept]


def test_awkward_valid_inputs_yield_even_sized_clips(awkward_videos, split_awkward):
    result = split_awkward
    assert all(v["status"] == "ok" for v in result.videos), [v.get("error") for v in result.videos]
    for name, path in awkward_videos.items():
        kept = _kept(result, path)
        assert kept, name
        for clip in kept:
            assert clip.width % 2 == 0 and clip.height % 2 == 0
            frames = decode_frames(_to_file(result.media[clip.clip_id]["mp4"]))
            assert len(frames) == clip.num_frames
    rotated = _kept(result, awkward_videos["rotated"])
    assert (rotated[0].width, rotated[0].height) == (240, 320)
    odd = _kept(result, awkward_videos["odd"])
    assert (odd[0].width, odd[0].height) == (320, 240)


def test_a_rotated_input_is_cut_turned_the_way_its_display_matrix_says(awkward_videos, split_awkward):
    """The rotated input is a stream copy of an upright 320x240 video with a display matrix (what phones
    write): a quarter turn, counterclockwise by ffprobe's reading of it. Every frame of its clips is the
    upright source's frame turned that way (np.rot90, counterclockwise for k > 0), from the clip's own
    source frame, and far from the turn the other way."""
    (matrix,) = [s for s in probe_video(awkward_videos["rotated"])["side_data_list"] if "rotation" in s]
    turns = round(float(matrix["rotation"]) / 90) % 4  # ffprobe: counterclockwise degrees
    assert turns in (1, 3)
    upright = decode_frames(awkward_videos["rotated"].with_name("upright.mp4"))  # [N, 48, 64, 3]
    kept = _kept(split_awkward, awkward_videos["rotated"])
    assert len(kept) == 2
    for clip in kept:
        frames = decode_frames(_to_file(split_awkward.media[clip.clip_id]["mp4"]), 48, 64)  # portrait
        assert frames.shape == (clip.num_frames, 64, 48, 3)
        error = {}
        for k in (turns, -turns):
            for offset in (-1, 0, 1):
                start = clip.source_start_frame + offset
                turned = np.rot90(upright[start : start + len(frames)], k=k, axes=(1, 2))
                error[k, offset] = float(np.mean((frames - turned) ** 2))
        assert min(error, key=error.get) == (turns, 0), error
        assert error[turns, 0] * 10 < error[-turns, 0], error


VFR_SHOWN_AT = np.concatenate([np.arange(60) / 25.0, 2.4 + np.arange(24) / 10.0])
"""When each frame of the variable-frame-rate input is shown, as tests/conftest.py builds it: 60 testsrc2
frames at 25 fps, then from 2.4 s 24 mandelbrot frames at 10 fps (the mp4 may lose the last one:
x264's frame delay and the mp4 edit list end the stream at 4.6 s)."""
VFR_CUT_S = 2.4


def test_vfr_clips_are_timed_on_the_sources_clock(awkward_videos, split_awkward):
    """A variable-frame-rate source is cut on a constant-rate timeline at the average rate its container
    states: the shots meet at the cut it was built with (2.4 s), the first shot's clip is that shot less
    the trim at each end, in that rate's frames and seconds, and each of its frames is the source frame
    on screen at that frame's time. (The second shot, 2.2 s as stored, is too short once trimmed.)"""
    fps = float(Fraction(probe_video(awkward_videos["vfr"])["avg_frame_rate"]))
    assert 10 < fps < 25
    source = decode_frames(awkward_videos["vfr"], stored=True)
    assert len(source) in (83, 84)
    shown_at = VFR_SHOWN_AT[: len(source)]
    rows = [c for c in split_awkward.clips if c.source == str(awkward_videos["vfr"])]
    (cut,) = [c for c in rows if c.drop_reason == "transition"]
    first, second = sorted((c for c in rows if c is not cut), key=lambda c: c.source_start_frame)
    assert (
        abs(cut.source_start_s - VFR_CUT_S) <= 1 / fps and second.source_start_frame == cut.source_start_frame
    )
    assert (first.kept, second.kept, second.drop_reason) == (True, False, "duration<2")
    trim = round(CurateConfig().clips.trim_s * fps)
    assert first.source_start_frame == trim
    assert abs(first.source_end_frame - (round(VFR_CUT_S * fps) - trim)) <= 1
    for clip in (first, second):
        assert clip.fps == pytest.approx(fps)
        assert clip.source_start_s == pytest.approx(clip.source_start_frame / fps)
        assert clip.source_end_s == pytest.approx(clip.source_end_frame / fps)
        assert clip.num_frames == clip.source_end_frame - clip.source_start_frame
        assert clip.duration_s == pytest.approx(clip.num_frames / fps)
    assert first.source_end_s <= VFR_CUT_S
    frames = decode_frames(_to_file(split_awkward.media[first.clip_id]["mp4"]))
    assert len(frames) == first.num_frames
    for i, frame in enumerate(frames):
        t = first.source_start_s + i / fps
        best = int(np.argmin(np.mean((source - frame) ** 2, axis=(1, 2, 3))))
        # the frame on screen at t: the last one shown at or before it, give or take one (the resampler
        # rounds each source timestamp to the nearest slot of its clock)
        on_screen = int(np.searchsorted(shown_at, t + 1e-9, side="right")) - 1
        assert abs(best - on_screen) <= 1, (i, t, best, on_screen)


def test_downscale_and_resample_options(two_shot_video):
    cfg = CurateConfig()
    cfg.transcode.max_short_side = 120
    cfg.transcode.fps = 12.5
    result = ClipSplitter(cfg).run(Task(0, (str(two_shot_video),)))
    kept = [c for c in result.clips if c.kept]
    assert kept
    for clip in kept:
        assert (clip.width, clip.height, clip.fps) == (160, 120, 12.5)
        assert clip.num_frames == pytest.approx((clip.source_end_frame - clip.source_start_frame) / 2, abs=1)


def test_audio_is_dropped_by_default_and_kept_on_request(two_shot_video, tmp_path):
    from curation import ffmpeg_tools, synthetic

    source = synthetic.with_audio(two_shot_video, tmp_path / "with_audio.mp4")
    assert probe(str(source), 2.0).has_audio
    for keep in (False, True):
        cfg = CurateConfig()
        cfg.transcode.keep_audio = keep
        result = ClipSplitter(cfg).run(Task(0, (str(source),)))
        clip = next(c for c in result.clips if c.kept)
        meta = ffmpeg_tools.probe_json(_to_file(result.media[clip.clip_id]["mp4"]), 30)
        audio = [s for s in meta["streams"] if s["codec_type"] == "audio"]
        assert len(audio) == int(keep)
        if keep:
            assert float(audio[0]["duration"]) == pytest.approx(clip.duration_s, abs=0.05)


def test_a_full_group_of_clips_gets_its_samples_from_the_one_decode(tmp_path):
    """32 clips in one ffmpeg process: every select expression stays within ffmpeg's limits."""
    from curation.clips import ClipSpan
    from curation.curate_config import TranscodeConfig
    from curation.frames import sample_plan
    from curation.scoring_config import FrameSamplerConfig
    from curation.synthetic import Shot, VideoSpec, make_video
    from curation.transcode import transcode_group

    source = make_video(tmp_path / "long.mp4", VideoSpec([Shot("testsrc2", 32 * 30)], 160, 120))
    info = probe(str(source), 2.0)
    spans = [ClipSpan(k, 30 * k + 2, 30 * k + 28, True) for k in range(32)]
    sampler = FrameSamplerConfig()
    clips = transcode_group(str(source), info, spans, TranscodeConfig(), sampler)
    assert [c.num_frames for c in clips] == [26] * 32
    for clip in clips:
        numbers, _ = sample_plan(26, info.fps, sampler)
        assert clip.samples is not None and len(clip.samples.rgb) == len(numbers) == 3


def test_a_group_of_one_long_clip_comes_out_whole(tmp_path):
    """x264 makes a keyframe every 250 frames: the muxer must not cut a lone 10 s clip there."""
    from curation.clips import ClipSpan
    from curation.curate_config import TranscodeConfig
    from curation.synthetic import Shot, VideoSpec, make_video
    from curation.transcode import transcode_group

    source = make_video(tmp_path / "one.mp4", VideoSpec([Shot("testsrc2", 300)], 160, 120, "30"))
    info = probe(str(source), 2.0)
    clips = transcode_group(str(source), info, [ClipSpan(0, 0, 300, True)], TranscodeConfig())
    assert [c.num_frames for c in clips] == [300]


def test_letterbox_bars_are_found_and_cropped_away_on_request(tmp_path):
    from curation.synthetic import Shot, VideoSpec, make_video

    boxed = "testsrc2=size=320x180:rate={r},pad=320:240:0:30:black"
    source = make_video(tmp_path / "letterbox.mp4", VideoSpec([Shot(boxed, 100)], 320, 240))
    for crop in (False, True):
        cfg = CurateConfig()
        cfg.transcode.crop_bars = crop
        result = ClipSplitter(cfg).run(Task(0, (str(source),)))
        clip = next(c for c in result.clips if c.kept)
        row = result.videos[0]
        if not crop:
            assert (clip.width, clip.height) == (320, 240) and row.get("crop_h") is None
            continue
        assert (row["crop_x"], row["crop_w"]) == (0, 320)
        assert abs(row["crop_y"] - 30) <= 2 and abs(row["crop_h"] - 180) <= 2
        assert clip.width == 320 and abs(clip.height - 180) <= 2
        frames = decode_frames(_to_file(result.media[clip.clip_id]["mp4"]), 64, 36)
        assert frames[:, :2].mean() > 40 and frames[:, -2:].mean() > 40  # no black rows left
