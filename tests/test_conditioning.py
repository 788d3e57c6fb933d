"""Frame conditioning outside the model: pixel masks on a VAE's latent grid, the filling of partly given
frame groups, the training mask mix and its kinds, the loss that leaves given cells out, and a given
first frame through the real (tiny) Wan VAE coming out as its round trip."""

from collections import Counter

import numpy as np
import pytest
import torch

from curation.config import ConfigError
from training.conditioning import (
    MASK_KINDS,
    check_mask_mix,
    draw_masks,
    fill_given_chunks,
    kind_mask,
    latent_mask,
)
from training.module import VideoDiTModule, masked_mse

# -- pixels to latents -----------------------------------------------------------------------------------


def test_latent_mask_for_wans_4x8x8():
    """9 frames of 16x16 -> 3 latent frames of 2x2: latent 0 = pixel frame 0, latent 1 = frames 1-4,
    latent 2 = frames 5-8; a latent cell is an 8x8 pixel square."""
    pixels = torch.zeros(3, 1, 9, 16, 16)
    pixels[0, :, 0] = 1  # the first frame, whole
    pixels[1, :, 4, 9, 3] = 1  # one pixel of frame 4: row block 1, column block 0
    pixels[2, :, 5, 0:8, 8:16] = 1  # the top right square of frame 5
    pixels[2, :, 8, 15, 15] = 1  # and one pixel of frame 8, bottom right
    expected = torch.zeros(3, 1, 3, 2, 2)
    expected[0, :, 0] = 1
    expected[1, 0, 1, 1, 0] = 1
    expected[2, 0, 2, 0, 1] = expected[2, 0, 2, 1, 1] = 1
    assert torch.equal(latent_mask(pixels, time_ratio=4, space_ratio=8), expected)


def test_latent_mask_for_a_per_frame_vae():
    pixels = torch.zeros(1, 1, 4, 16, 8)
    pixels[0, :, 2, 8:, :] = 1  # the bottom half of frame 2
    pixels[0, :, 3, 0, 0] = 1
    expected = torch.zeros(1, 1, 4, 2, 1)
    expected[0, 0, 2, 1, 0] = expected[0, 0, 3, 0, 0] = 1
    assert torch.equal(latent_mask(pixels, time_ratio=1, space_ratio=8), expected)


def test_latent_mask_refuses_a_size_the_vae_cannot_encode():
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        latent_mask(torch.zeros(1, 1, 8, 16, 16), 4, 8)


def numbered_video(frames: int) -> torch.Tensor:
    """[1, 3, T, 2, 2] whose frame f is the constant f, so a frame's content names its source."""
    return (
        torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(1, 3, frames, 2, 2).clone()
    )


def sources(video: torch.Tensor) -> list[int]:
    return [int(v) for v in video[0, 0, :, 0, 0]]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([0], [0, 1, 2, 3, 4, 5, 6, 7, 8]),  # the first frame is a group of its own
        ([6], [0, 1, 2, 3, 4, 6, 6, 6, 6]),  # a keyframe alone in the group 5-8 is held still
        ([5, 7], [0, 1, 2, 3, 4, 5, 5, 7, 7]),  # nearest, the earlier on a tie (frame 6)
        ([0, 8], [0, 1, 2, 3, 4, 8, 8, 8, 8]),  # first and last: the middle group 1-4 is not given
        ([2, 8], [0, 2, 2, 2, 2, 8, 8, 8, 8]),
    ],
)
def test_fill_given_chunks_for_wans_groups_of_four(given, expected):
    mask = torch.zeros(1, 1, 9, 2, 2)
    mask[:, :, given, 0, 1] = 1  # one pixel is enough to make a frame given
    assert sources(fill_given_chunks(numbered_video(9), mask, time_ratio=4)) == expected


def test_fill_given_chunks_changes_nothing_for_a_per_frame_vae():
    mask = torch.zeros(1, 1, 5, 2, 2)
    mask[:, :, [1, 4]] = 1
    assert sources(fill_given_chunks(numbered_video(5), mask, time_ratio=1)) == [0, 1, 2, 3, 4]


# -- the training mask mix -------------------------------------------------------------------------------


def whole_frames(mask: torch.Tensor) -> list[int]:
    """The frames a [1, T, H, W] mask gives whole; asserts every frame is all given or all not."""
    per_frame = mask[0].flatten(1)
    assert (per_frame == per_frame[:, :1]).all(), "a frame kind gave part of a frame"
    return [f for f in range(mask.shape[1]) if per_frame[f, 0] == 1]


def test_mask_kinds_draw_the_frames_they_claim():
    g = torch.Generator().manual_seed(0)
    grid, frames = (6, 4, 4), 6
    assert not kind_mask("none", grid, g).any()
    assert whole_frames(kind_mask("first_frame", grid, g)) == [0]
    prefixes = Counter()
    for _ in range(200):
        given = whole_frames(kind_mask("prefix", grid, g))
        assert given == list(range(len(given)))
        prefixes[len(given)] += 1
    assert set(prefixes) == set(range(1, frames))  # k uniform in 1..T-1: never none, never all
    strides = Counter()
    for _ in range(200):
        given = whole_frames(kind_mask("keyframes", grid, g))
        assert given[0] == 0 and len(given) >= 2 and len(given) < frames
        step = given[1] - given[0]
        assert given == [0, frames - 1] or given == list(range(0, frames, step))
        strides["first_last" if given == [0, frames - 1] else step] += 1
    assert strides["first_last"] > 80 and {2, 3, 4} <= set(strides)  # half first+last, the rest every n-th
    spatial = 0
    for _ in range(200):
        mask = kind_mask("boxes", grid, g)
        assert not mask.all()
        per_frame = mask[0].flatten(1)
        spatial += bool((per_frame != per_frame[:, :1]).any())
    assert spatial > 100  # boxes are regions of frames, not whole frames


def test_the_mix_shares_are_kept_over_many_draws():
    mix = check_mask_mix({"none": 5, "first_frame": 2, "prefix": 1, "keyframes": 1, "boxes": 1})
    assert mix == pytest.approx(
        {"none": 0.5, "first_frame": 0.2, "prefix": 0.1, "keyframes": 0.1, "boxes": 0.1}
    )
    masks, kinds = draw_masks(mix, 4000, (4, 2, 2), torch.Generator().manual_seed(0))
    assert masks.shape == (4000, 1, 4, 2, 2)
    counts = Counter(kinds)
    for kind in MASK_KINDS:  # binomial std at most 0.008 for 4000 draws: 0.03 is ~4 std
        assert counts[kind] / 4000 == pytest.approx(mix[kind], abs=0.03), kind
    first = [i for i, k in enumerate(kinds) if k == "first_frame"]
    assert masks[first, :, 0].all() and not masks[first, :, 1:].any()


@pytest.mark.parametrize(
    ("mix", "words"),
    [
        ({"first": 1.0}, "unknown mask kind"),
        ({"none": -0.1, "boxes": 1}, "model.mask_mix.none must be a share"),
        ({"none": 0}, "sum to 0"),
    ],
)
def test_a_bad_mask_mix_is_a_config_error_naming_the_key(mix, words):
    with pytest.raises(ConfigError, match=words):
        VideoDiTModule("tiny", {"in_channels": 4, "text_dim": 8}, mask_mix=mix)


def test_training_draws_no_masks_for_text_only_mixes_or_models():
    shape = (3, 4, 4, 2, 2)
    only_text = VideoDiTModule("tiny", {"in_channels": 4, "text_dim": 8}, mask_mix={"none": 1.0})
    no_conditioning = VideoDiTModule("tiny", {"in_channels": 4, "text_dim": 8, "conditioning": False})
    conditioned = VideoDiTModule("tiny", {"in_channels": 4, "text_dim": 8}, mask_mix={"first_frame": 1.0})
    assert only_text.draw_given(shape)[0] is None and no_conditioning.draw_given(shape)[0] is None
    given, kinds = conditioned.draw_given(shape)
    assert kinds == ["first_frame"] * 3 and given[:, :, 0].all() and not given[:, :, 1:].any()


def test_the_loss_leaves_given_cells_out():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 3, 2, 2, generator=g)
    given = torch.zeros(2, 1, 3, 2, 2)
    given[0, :, 0] = 1
    given[1, :, :, 1, 1] = 1
    wrong_where_given = target + 5 * given  # wrong on every channel of the given cells, right elsewhere
    assert torch.equal(masked_mse(wrong_where_given, target, given), torch.zeros(2))
    pred = target + torch.randn(target.shape, generator=g)
    free = np.broadcast_to(given.numpy() == 0, target.shape)
    err = (pred.numpy() - target.numpy()) ** 2
    expected = [err[i][free[i]].mean() for i in range(2)]
    np.testing.assert_allclose(masked_mse(pred, target, given).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(masked_mse(pred, target, None).numpy(), err.mean(axis=(1, 2, 3, 4)), rtol=1e-6)


# -- a given first frame through the tiny Wan VAE ------------------------------------------------------


@pytest.fixture(scope="module")
def wan_module(tmp_path_factory) -> VideoDiTModule:
    from training.tiny_encoders import build_tiny_wan_t2v

    wan = build_tiny_wan_t2v(tmp_path_factory.mktemp("tiny-wan"), seed=0)
    torch.manual_seed(0)
    return VideoDiTModule("tiny", vae={"model": wan}, text_encoder={"model": wan}).eval()


def moving_video(frames: int = 9, size: int = 32) -> torch.Tensor:
    t = torch.linspace(0, 1, frames)[None, None, :, None, None]
    y = torch.linspace(-1, 1, size)[None, None, None, :, None]
    x = torch.linspace(-1, 1, size)[None, None, None, None, :]
    phase = torch.tensor([0.0, 2.0, 4.0])[None, :, None, None, None]
    return 0.8 * torch.sin(3 * x + 2 * y + 4 * t + phase)


def test_a_given_first_frame_comes_out_as_its_vae_round_trip(wan_module):
    vae, _ = wan_module.encoders()
    video = moving_video()
    given = torch.zeros(1, 1, 9, 32, 32)
    given[:, :, 0] = 1
    out = wan_module.generate_videos(
        ["a wave"], 9, 32, 32, cond_video=video, cond_mask=given, steps=2, seed=0
    )
    round_trip = vae.decode(vae.encode(video[:, :, :1]))  # the first frame alone, as an image
    assert out.shape == (1, 3, 9, 32, 32)
    torch.testing.assert_close(out[:, :, 0], round_trip[:, :, 0], atol=1e-4, rtol=0)
    later = (out[:, :, 1:] - round_trip[:, :, :1]).abs().mean(dim=(0, 1, 3, 4))  # per later frame
    assert (later > 0.05).all(), later
    with pytest.raises(ValueError, match="cond_video must be"):
        wan_module.generate_videos(
            ["a wave"], 9, 32, 32, cond_video=video[:, :, :5], cond_mask=given, steps=1
        )
