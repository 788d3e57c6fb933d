"""`reelmill sample`'s conditioning modes end to end: a tiny DiT checkpoint with the tiny random-weight
Wan VAE and UMT5, real ffmpeg and H.264, every mode through `jobs.cli.main`.

Two kinds of checks. What the command hands the model: every call to `generate_videos` is recorded
(and runs as usual), and the given frames and masks are compared with the inputs read independently
(PIL, ffmpeg) and placed where the mode says. What comes out: frame counts and sizes (ffprobe), and
the given frames against the VAE round trip of the given input, within H.264's error. The tiny random
VAE decodes almost any latent to much the same picture, so the pixel checks bound closeness; the
recorded calls are what tell one placement from another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import decode_frames, probe_video
from curation.synthetic import Shot, VideoSpec, make_video
from jobs.cli import main
from training.module import VideoDiTModule

FRAMES, SIZE, FPS = 9, 64, 8.0  # the tiny Wan VAE: latent frames 0 | 1-4 | 5-8, 8x8 pixel cells
CLIP_FRAMES = 16
STEPS = "2"
GIVEN_MAE = 0.1
"""Mean abs error (in [-1, 1]) allowed between a given output frame and the VAE round trip of its input:
H.264 at crf 18 costs about 0.04 on the tiny VAE's busy pictures, and the causal decoder lets the
generated latent frame before a given one shift it by about as much again."""


def write_checkpoint(path: Path, tiny_wan: str, before_issue_19: bool = False) -> Path:
    """A Lightning-style checkpoint of a tiny DiT: random weights everywhere (adaLN-Zero would make a
    fresh model output zeros, and a model that ignores its weights samples the same from any of them),
    EMA weights different from the live ones, trained at 9 frames of 64x64 at 8 fps. `before_issue_19`:
    no caption projection, no frame conditioning, and hyper-parameters that name neither."""
    overrides = {"caption_projection": False, "conditioning": False} if before_issue_19 else {}
    module = VideoDiTModule(
        model="tiny", model_overrides=overrides, vae={"model": tiny_wan}, text_encoder={"model": tiny_wan}
    )
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for live, ema in zip(module.model.parameters(), module.ema.parameters(), strict=True):
            live.copy_(torch.randn(live.shape, generator=generator) * 0.05)
            ema.copy_(live + torch.randn(live.shape, generator=generator) * 0.05)
    hparams = dict(module.hparams)
    if before_issue_19:
        hparams.pop("mask_mix")
        hparams["model_overrides"] = {}
    trained = {"num_frames": FRAMES, "height": SIZE, "width": SIZE, "fps": FPS}
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": hparams,
            "datamodule_hyper_parameters": trained,
        },
        path,
    )
    return path


def mp4_video(path: Path) -> torch.Tensor:
    """[3, T, 64, 64] float in [-1, 1], decoded by the ffmpeg command line."""
    frames = decode_frames(path, SIZE, SIZE)  # [T, H, W, 3] float 0-255
    return torch.from_numpy(frames).permute(3, 0, 1, 2) / 127.5 - 1


def png_image(path: Path, seed: int) -> torch.Tensor:
    """Write a 64x64 PNG of smooth colour blobs; returns it as [3, 64, 64] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    Image.fromarray(pixels).save(path)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 127.5 - 1


def hold_still(video: torch.Tensor, given: list[int]) -> torch.Tensor:
    """The frames of `video` [3, T, H, W] in each latent frame (0 | 1-4 | 5-8) that holds a given frame,
    replaced by the nearest given frame of that latent frame: what the VAE is asked to encode."""
    out = video.clone()
    groups = [[0]] + [list(range(s, min(s + 4, video.shape[1]))) for s in range(1, video.shape[1], 4)]
    for group in groups:
        inside = [g for g in given if g in group]
        for f in group:
            if inside and f not in given:
                out[:, f] = video[:, min(inside, key=lambda g: (abs(g - f), g))]
    return out


def mae(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


@pytest.fixture(scope="module")
def files(tiny_wan, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("sample-modes")
    clip = make_video(d / "clip.mp4", VideoSpec([Shot("testsrc2", CLIP_FRAMES)], SIZE, SIZE, fps="8"))
    # 4:3 with a white left half: scaled to cover 64x64 and centre-cropped (columns 16-111 kept), its white
    # columns 16-63 become the left half of the clip
    mask = np.zeros((96, 128), np.uint8)
    mask[:, :64] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "notes.txt").write_text("not an image")
    return {
        "dir": d,
        "ckpt": write_checkpoint(d / "new.ckpt", tiny_wan),
        "old_ckpt": write_checkpoint(d / "old.ckpt", tiny_wan, before_issue_19=True),
        "clip": clip,
        "images": [png_image(d / f"key{i}.png", seed=i) for i in range(3)],
        "mask": d / "mask.png",
        "notes": d / "notes.txt",
    }


@pytest.fixture(scope="module")
def vae(tiny_wan):
    from training.encoders import VAEConfig, VideoVAE

    return VideoVAE.from_config(VAEConfig(model=tiny_wan))


def round_trip(vae, video: torch.Tensor) -> torch.Tensor:
    return vae.decode(vae.encode(video[None]))[0]


MODES = {  # name: (arguments after the common ones, frames written)
    "text": ([], FRAMES),
    "image": (["--image", "{d}/key0.png"], FRAMES),
    "keyframes": (["--keyframes", "{d}/key0.png", "{d}/key1.png", "{d}/key2.png"], FRAMES),
    "inpaint": (["--inpaint", "{d}/clip.mp4", "--mask", "{d}/mask.png"], FRAMES),
    "extend": (["--extend", "{d}/clip.mp4", "--seconds", "0.75"], CLIP_FRAMES + 6),
    "long": (["--long", "2"], 2 * (FRAMES - 1) + 1),
    "old-checkpoint": ([], FRAMES),
}


@pytest.fixture(scope="module")
def runs(files) -> dict:
    """Every mode run once through the CLI, with the calls it made to `generate_videos` recorded."""
    calls: list[dict] = []
    original = VideoDiTModule.generate_videos

    def recorded(self, prompts, num_frames, height, width, cond_video=None, cond_mask=None, **kwargs):
        out = original(self, prompts, num_frames, height, width, cond_video, cond_mask, **kwargs)
        clone = lambda x: None if x is None else x.detach().clone()  # noqa: E731
        calls.append(
            {"video": clone(cond_video), "mask": clone(cond_mask), "seed": kwargs["seed"], "out": clone(out)}
        )
        return out

    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VideoDiTModule, "generate_videos", recorded)
        for name, (extra, _) in MODES.items():
            calls.clear()
            output = files["dir"] / f"{name}.mp4"
            ckpt = files["old_ckpt" if name == "old-checkpoint" else "ckpt"]
            argv = ["sample", "--ckpt", str(ckpt), "--prompt", "a red ball", "--output", str(output)]
            argv += ["--steps", STEPS, "--device", "cpu", *[a.format(d=files["dir"]) for a in extra]]
            results[name] = {"rc": main(argv), "output": output, "calls": list(calls)}
    return results


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_writes_its_frame_count_at_the_clip_size(runs, mode):
    run = runs[mode]
    assert run["rc"] == 0
    stream = probe_video(run["output"])
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (MODES[mode][1], SIZE, SIZE)


def test_image_is_the_first_frame_and_comes_out_as_its_round_trip(runs, files, vae):
    (call,) = runs["image"]["calls"]
    image = files["images"][0]
    assert torch.equal(call["mask"][0, 0, :, 0, 0], torch.tensor([1.0] + [0.0] * (FRAMES - 1)))
    assert call["mask"][:, :, 0].min() == 1
    assert torch.allclose(call["video"][0, :, 0], image, atol=1e-6)
    out = mp4_video(runs["image"]["output"])
    reference = round_trip(vae, image[:, None])[:, 0]  # a causal VAE decodes frame 0 from itself alone
    assert mae(out[:, 0], reference) < GIVEN_MAE
    assert mae(out[:, FRAMES - 1], reference) > 2 * mae(out[:, 0], reference)  # a generated frame


def test_keyframes_are_spread_evenly_and_held_still_in_their_latent_frame(runs, files, vae):
    (call,) = runs["keyframes"]["calls"]
    places = [0, 4, 8]  # 3 images over 9 frames, first and last included
    assert call["mask"][0, 0, :, 0, 0].tolist() == [1.0 if f in places else 0.0 for f in range(FRAMES)]
    for place, image in zip(places, files["images"], strict=True):
        assert torch.allclose(call["video"][0, :, place], image, atol=1e-6)
    # every latent frame holds a keyframe here, so the whole output is the round trip of the held frames
    video = torch.zeros(3, FRAMES, SIZE, SIZE)
    video[:, places] = torch.stack(files["images"], dim=1)
    expected = round_trip(vae, hold_still(video, places))
    out = mp4_video(runs["keyframes"]["output"])
    assert mae(out, expected) < GIVEN_MAE


def test_inpaint_gives_the_clip_outside_the_white_mask_scaled_like_the_clip(runs, files, vae):
    (call,) = runs["inpaint"]["calls"]
    clip = mp4_video(files["clip"])[:, :FRAMES]
    assert mae(call["video"][0], clip) < 2 / 255  # the clip's first window (PyAV and ffmpeg decode alike)
    given = call["mask"][0, 0]
    assert given[:, :, : SIZE // 2].max() == 0  # white (left half of the 4:3 mask's crop): repainted
    assert given[:, :, SIZE // 2 :].min() == 1
    out = mp4_video(runs["inpaint"]["output"])
    kept = slice(SIZE // 2 + 16, SIZE)  # away from the edge, which the decoder's convolutions blur across
    assert mae(out[..., kept], round_trip(vae, clip)[..., kept]) < GIVEN_MAE


def test_extend_chains_windows_from_the_last_frames_and_starts_with_the_clip(runs, files):
    calls = runs["extend"]["calls"]
    clip = mp4_video(files["clip"])
    context = 5  # 1 + the VAE's 4: two whole latent frames, 4 new frames per 9-frame window
    assert len(calls) == 2 and [c["seed"] for c in calls] == [0, 1]  # 6 frames added: 0.75 s at 8 fps
    for call in calls:
        assert call["mask"][0, 0, :, 0, 0].tolist() == [1.0] * context + [0.0] * (FRAMES - context)
    assert mae(calls[0]["video"][0, :, :context], clip[:, -context:]) < 2 / 255
    # the second window continues from the clip's last frame and the 4 frames the first one generated
    assert mae(calls[1]["video"][0, :, 0], clip[:, -1]) < 2 / 255
    assert torch.equal(calls[1]["video"][0, :, 1:context], calls[0]["out"][0, :, context:])
    out = mp4_video(runs["extend"]["output"])
    assert mae(out[:, :CLIP_FRAMES], clip) < 0.05  # the clip itself, once more through H.264
    assert mae(out[:, CLIP_FRAMES:], clip[:, -6:]) > 4 * mae(out[:, :CLIP_FRAMES], clip)


def test_long_interpolates_between_keyframes_of_a_first_window(runs, vae):
    first, *gaps = runs["long"]["calls"]
    assert first["mask"] is None and len(gaps) == 2  # a text-to-video window, then one per gap
    keys = first["out"][0][:, [0, 4, 8]]  # 3 evenly spaced frames of it
    out = mp4_video(runs["long"]["output"])
    for i, call in enumerate(gaps):
        assert call["seed"] == 1 + i
        assert call["mask"][0, 0, :, 0, 0].tolist() == [1.0] + [0.0] * (FRAMES - 2) + [1.0]
        assert torch.equal(call["video"][0, :, 0], keys[:, i])
        assert torch.equal(call["video"][0, :, FRAMES - 1], keys[:, i + 1])
        expected = round_trip(vae, hold_still(call["video"][0], [0, FRAMES - 1]))
        # the keyframes sit at the window boundaries, frames 0, 8 and 16 (a window's first frame is the
        # previous window's last, written once)
        if i == 0:
            assert mae(out[:, 0], expected[:, 0]) < GIVEN_MAE
        assert mae(out[:, (i + 1) * (FRAMES - 1)], expected[:, -1]) < GIVEN_MAE


def test_text_to_video_and_an_old_checkpoint_are_given_nothing(runs):
    for name in ("text", "old-checkpoint"):
        (call,) = runs[name]["calls"]
        assert call["video"] is None and call["mask"] is None


BAD = {  # arguments, the flag the message must name
    "unreadable image": (["--image", "{d}/notes.txt"], "--image"),
    "missing clip": (["--extend", "{d}/nope.mp4", "--seconds", "1"], "--extend"),
    "unreadable mask": (["--inpaint", "{d}/clip.mp4", "--mask", "{d}/notes.txt"], "--mask"),
    "inpaint without mask": (["--inpaint", "{d}/clip.mp4"], "--mask"),
    "seconds without extend": (["--seconds", "2"], "--seconds"),
    "extend without seconds": (["--extend", "{d}/clip.mp4"], "--seconds"),
    "one keyframe": (["--keyframes", "{d}/key0.png"], "--keyframes"),
    "long below 1": (["--long", "0"], "--long"),
    "unconditioned model": (["--image", "{d}/key0.png"], "--image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_exit_2_naming_the_flag(files, case, capsys, tmp_path):
    extra, flag = BAD[case]
    ckpt = files["old_ckpt" if case == "unconditioned model" else "ckpt"]
    argv = ["sample", "--ckpt", str(ckpt), "--prompt", "x", "--output", str(tmp_path / "bad.mp4")]
    argv += ["--steps", "1", "--device", "cpu", *[a.format(d=files["dir"]) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and flag in err and "Traceback" not in err
    if case == "unconditioned model":
        assert "conditioning" in err
    assert not (tmp_path / "bad.mp4").exists()


def test_two_modes_at_once_are_refused_by_the_parser(files, capsys):
    argv = ["sample", "--ckpt", str(files["ckpt"]), "--prompt", "x", "--output", "o.mp4", "--long", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--image", str(files["dir"] / "key0.png")])
    assert exit_info.value.code == 2
    assert "--image" in capsys.readouterr().err


def test_a_mask_grows_to_whole_latent_cells():
    from training.video_in import grow_to_latent_cells

    repaint = torch.zeros(1, FRAMES, SIZE, SIZE)
    repaint[0, 2, 9, 17] = 1  # one pixel in latent frame 1 (frames 1-4), cell rows 8-15, columns 16-23
    grown = grow_to_latent_cells(repaint, time_ratio=4, space_ratio=8)
    expected = torch.zeros_like(repaint)
    expected[0, 1:5, 8:16, 16:24] = 1
    assert torch.equal(grown, expected)


def test_an_image_is_scaled_to_cover_and_centre_cropped(tmp_path):
    from training.video_in import read_image

    pixels = np.zeros((64, 256, 3), np.uint8)  # 4:1; the middle quarter red, the sides blue
    pixels[:, :96, 2] = pixels[:, 160:, 2] = 255
    pixels[:, 96:160, 0] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = read_image(str(tmp_path / "wide.png"), 32, 32, "--image")  # covers 32x32 with the middle 64
    assert image.shape == (3, 32, 32)
    assert torch.allclose(image, torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 32, 32), atol=1e-6)
