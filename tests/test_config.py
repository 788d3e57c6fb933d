"""Config loading: presets, overrides, and errors that name the offending key."""

import pytest

from curation import config
from jobs.job_configs import CurateJobConfig


def test_default_preset_loads_and_overrides_apply():
    cfg = config.load(CurateJobConfig, "curate", "default", ["clips.max_clip_s=6", "scenes.detector=content"])
    assert cfg.clips.max_clip_s == 6.0
    assert cfg.scenes.detector == "content"
    assert cfg.transcode.crf == 22


def test_fast_preset_differs_from_default():
    fast = config.load(CurateJobConfig, "curate", "fast")
    assert fast.transcode.preset == "ultrafast"
    assert config.fingerprint(fast) != config.fingerprint(config.load(CurateJobConfig, "curate", "default"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clips.max_clp_s=3", "unknown config key 'clips.max_clp_s' (did you mean 'clips.max_clip_s'?)"),
        ("nosuch.key=1", "unknown config key 'nosuch'"),
        ("clips.min_clip_s=abc", "clips.min_clip_s: expected a number"),
        ("scenes.detector=histogram", "scenes.detector: 'histogram' is not one of"),
        ("transcode.crf=80", "transcode.crf: must be in 0..51"),
        ("clips.max_clip_s=1", "clips.max_clip_s: must be >= clips.min_clip_s"),
        ("transcode.keep_audio=maybe", "transcode.keep_audio: expected true or false"),
        ("input.videos_per_task=2.5", "input.videos_per_task: expected an integer"),
        ("clips", "--set expects key=value"),
    ],
)
def test_bad_keys_and_values_are_rejected_by_name(override, message):
    with pytest.raises(config.ConfigError) as err:
        config.load(CurateJobConfig, "curate", "default", [override])
    assert message in str(err.value)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(config.ConfigError, match="default"):
        config.load(CurateJobConfig, "curate", "no-such-preset")


def test_yaml_file_path_is_accepted(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("transcode:\n  max_short_side: 240\n")
    assert config.load(CurateJobConfig, "curate", str(path)).transcode.max_short_side == 240
