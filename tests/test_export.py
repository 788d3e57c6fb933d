"""`reelmill export`: a checkpoint to safetensors + config.json + reelmill.json, and sampling from it
gives the very video sampling from the checkpoint gives (same seed, same frames bit for bit)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sample_modes import FPS, FRAMES, SIZE, write_checkpoint

from conftest import decode_frames
from jobs.cli import main
from training.model import PRESETS, DiTConfig

TINY_WAN_CHANNELS, TINY_UMT5_WIDTH = 4, 32  # training.tiny_encoders: TINY_WAN_VAE z_dim, TINY_UMT5 d_model


@pytest.fixture(scope="module")
def exported(tiny_wan, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(d / "run.ckpt", tiny_wan)
    assert main(["export", str(ckpt), str(d / "ema")]) == 0
    assert main(["export", str(ckpt), str(d / "live"), "--no-ema"]) == 0
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {"dir": d, "ckpt": ckpt, "saved": saved}


def sample(source: Path, output: Path, *extra: str) -> np.ndarray:
    argv = ["sample", "--ckpt", str(source), "--prompt", "a red ball", "--output", str(output)]
    assert main([*argv, "--steps", "2", "--seed", "3", "--device", "cpu", *extra]) == 0
    return decode_frames(output, SIZE, SIZE)


def test_an_export_samples_the_same_video_as_its_checkpoint(exported):
    d = exported["dir"]
    from_ckpt = sample(exported["ckpt"], d / "ckpt-ema.mp4")
    assert np.array_equal(sample(d / "ema", d / "export-ema.mp4"), from_ckpt)
    live = sample(exported["ckpt"], d / "ckpt-live.mp4", "--no-ema")
    assert np.array_equal(sample(d / "live", d / "export-live.mp4"), live)
    assert not np.array_equal(live, from_ckpt)  # the two weight sets sample differently: the check has teeth


def test_the_safetensors_file_holds_only_the_dit_tensors(exported):
    raw = (exported["dir"] / "ema" / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])  # the format: a little-endian header size, a JSON header, data
    header = json.loads(raw[8 : 8 + length])
    metadata = header.pop("__metadata__", {})  # optional, and strings only
    assert all(isinstance(v, str) for v in metadata.values())
    ema = {
        k.removeprefix("ema."): v for k, v in exported["saved"]["state_dict"].items() if k.startswith("ema.")
    }
    assert set(header) == set(ema)
    assert all(set(entry) == {"dtype", "shape", "data_offsets"} for entry in header.values())
    assert sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values()) == len(raw) - 8 - length

    from safetensors.torch import load_file

    loaded = load_file(exported["dir"] / "ema" / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in ema.items())


def test_from_pretrained_rebuilds_the_config_and_weights(exported):
    from training.pretrained import PretrainedVideoDiT

    model = PretrainedVideoDiT.from_pretrained(str(exported["dir"] / "live"))
    expected = DiTConfig(**PRESETS["tiny"], in_channels=TINY_WAN_CHANNELS, text_dim=TINY_UMT5_WIDTH)
    assert model.cfg == expected
    config = json.loads((exported["dir"] / "live" / "config.json").read_text())
    assert set(config) == set(DiTConfig.__dataclass_fields__)
    live = {
        k.removeprefix("model."): v
        for k, v in exported["saved"]["state_dict"].items()
        if k.startswith("model.")
    }
    assert all(torch.equal(model.state_dict()[k], v) for k, v in live.items())


def test_reelmill_json_says_what_sampling_needs(exported, tiny_wan):
    info = json.loads((exported["dir"] / "ema" / "reelmill.json").read_text())
    assert info["models"] == "random-weights" and info["weights"] == "ema"
    assert info["clip"] == {"num_frames": FRAMES, "height": SIZE, "width": SIZE, "fps": FPS}
    assert info["vae"]["model"] == tiny_wan and info["text_encoder"]["model"] == tiny_wan
    assert info["shift"] is None and info["preset"] == "tiny"
    assert json.loads((exported["dir"] / "live" / "reelmill.json").read_text())["weights"] == "live"


def test_export_refuses_a_directory_in_use_unless_it_replaces_an_export(exported, tmp_path, capsys):
    ckpt = str(exported["ckpt"])
    assert main(["export", ckpt, str(exported["dir"] / "ema")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", ckpt, str(foreign)]) == 2
    assert main(["export", ckpt, str(foreign), "--overwrite"]) == 2
    assert "holds none" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    again = tmp_path / "again"
    assert main(["export", ckpt, str(again)]) == 0
    assert main(["export", ckpt, str(again), "--overwrite", "--no-ema"]) == 0
    assert json.loads((again / "reelmill.json").read_text())["weights"] == "live"


def test_a_checkpoint_from_before_frame_conditioning_exports_and_samples(tiny_wan, tmp_path):
    ckpt = write_checkpoint(tmp_path / "old.ckpt", tiny_wan, before_issue_19=True)
    assert main(["export", str(ckpt), str(tmp_path / "old")]) == 0
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert (config["caption_projection"], config["conditioning"]) == (False, False)
    assert np.array_equal(sample(tmp_path / "old", tmp_path / "a.mp4"), sample(ckpt, tmp_path / "b.mp4"))


def test_sample_refuses_a_directory_that_is_not_an_export(tmp_path, capsys):
    argv = ["sample", "--ckpt", str(tmp_path), "--prompt", "x", "--output", str(tmp_path / "o.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--ckpt" in err and "reelmill export" in err
