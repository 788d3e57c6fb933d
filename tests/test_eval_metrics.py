"""The eval metrics against properties known without them: closed forms of the Fréchet distance, FVD of a set
against itself, CLIPSIM of a CLIP fine-tuned here to tell three videos apart, subject consistency of still and
shuffled videos, and the frame statistics of frozen, ramping and alternating videos."""

import numpy as np
import open_clip
import pytest
import torch
from clip_fitting import fit_clip_to_captions
from safetensors.torch import save_file

from curation.scoring.aesthetic import MissingModelError
from training.evaluation.clipsim import ClipSim, clipsim_from_embeddings
from training.evaluation.config import ClipSimConfig
from training.evaluation.consistency import SubjectConsistency, consistency_from_embeddings
from training.evaluation.fvd import VideoFeatureNet, frechet_distance, fvd, gaussian
from training.evaluation.smoothness import Smoothness, frame_statistics
from training.evaluation.tiny_models import build_tiny_dinov2, build_tiny_video_net
from training.tiny_encoders import build_tiny_open_clip

CPU = torch.device("cpu")


def moving_video(seed: int, frames: int = 8, size: int = 32) -> np.ndarray:
    """uint8 [T, H, W, 3]: colour gradients drifting over time, each seed its own phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None] / frames
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    phase = rng.uniform(0, 6.28, 3)
    video = np.stack([np.sin(3 * x + 2 * y + 4 * t + p) for p in phase], axis=-1)
    return ((video * 0.8 + 1) * 127.5).clip(0, 255).astype(np.uint8)


# ---- Fréchet distance and FVD ----


def test_frechet_distance_matches_the_closed_forms():
    # 1-D: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == (
        pytest.approx(4 + 4 + 1 - 2 * 2)
    )
    # diagonal covariances: the 1-D form summed over dimensions
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.1])
    expected = float(((m1 - m2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    # full covariances: Tr sqrt(S1 S2) from the eigenvalues of the (non-symmetric) product
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    trace_sqrt = np.sqrt(np.linalg.eigvals(c1 @ c2).real).sum()
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(direct, rel=1e-9)


@pytest.fixture(scope="module")
def video_nets(tmp_path_factory):
    d = tmp_path_factory.mktemp("video-nets")
    return {
        "i3d": build_tiny_video_net(d / "i3d", seed=0, i3d_call=True),
        "plain": build_tiny_video_net(d / "plain", seed=0, i3d_call=False),
    }


def test_fvd_of_a_set_against_itself_is_zero_and_grows_with_noise(video_nets):
    net = VideoFeatureNet(video_nets["i3d"], CPU)
    assert net.describe()["call"] == "i3d" and len(net.describe()["sha256"]) == 64
    videos = [moving_video(seed) for seed in range(24)]
    clean = net.features(videos)
    assert clean.shape == (24, 16)
    mu, sigma = gaussian(clean)
    scale = float((mu**2).sum() + np.trace(sigma))
    assert fvd(clean, clean) < 1e-6 * scale
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(24, *videos[0].shape))
    distances = []
    for level in (8, 24, 64):  # grey levels of Gaussian noise added to every pixel
        noisy = [np.clip(v + level * n, 0, 255).astype(np.uint8) for v, n in zip(videos, noise, strict=True)]
        distances.append(fvd(clean, net.features(noisy)))
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_a_plain_video_network_is_called_with_the_videos_alone(video_nets):
    plain = VideoFeatureNet(video_nets["plain"], CPU)
    assert plain.describe()["call"] == "plain"
    videos = [moving_video(seed, size=64) for seed in range(3)]
    x = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    i3d = VideoFeatureNet(video_nets["i3d"], CPU)  # the same weights (same seed), behind the I3D call
    with torch.no_grad():  # at 64 px the I3D call's resize is the identity
        expected = i3d.net(x, rescale=False, resize=False, return_features=True).double().numpy()
    np.testing.assert_allclose(plain.features(videos), expected, rtol=1e-5, atol=1e-6)


def test_a_missing_feature_network_names_its_key(tmp_path):
    with pytest.raises(MissingModelError, match=r"^fvd\.network: no such file"):
        VideoFeatureNet(str(tmp_path / "i3d_torchscript.pt"), CPU)
    (tmp_path / "not-a-net.pt").write_bytes(b"garbage")
    with pytest.raises(MissingModelError, match=r"^fvd\.network: .* is not a TorchScript file"):
        VideoFeatureNet(str(tmp_path / "not-a-net.pt"), CPU)


# ---- CLIPSIM ----

CAPTIONS = ("a plain red square", "green and black vertical stripes", "a blue checkerboard")


def distinct_videos(frames: int = 4, size: int = 64) -> list[np.ndarray]:
    """Three videos that look nothing alike (with a little frame-to-frame noise)."""
    rng = np.random.default_rng(0)
    x = np.arange(size)
    red = np.zeros((size, size, 3)) + [220, 30, 30]
    stripes = np.zeros((size, size, 3))
    stripes[:, (x // 8) % 2 == 0] = [30, 200, 30]
    checker = np.zeros((size, size, 3))
    checker[((x[:, None] // 16) + (x[None, :] // 16)) % 2 == 0] = [30, 30, 220]
    return [
        np.clip(base[None] + rng.normal(0, 6, (frames, size, size, 3)), 0, 255).astype(np.uint8)
        for base in (red, stripes, checker)
    ]


def fine_tune_clip(local_dir: str, videos: list[np.ndarray], steps: int = 30) -> None:
    """Train the tiny CLIP in `local_dir` contrastively (as CLIP is trained) to pair each video's frames with
    its caption, and write the weights back where its loader reads them."""
    torch.manual_seed(0)
    name = local_dir
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    fit_clip_to_captions(model, preprocess, open_clip.get_tokenizer(name), videos, CAPTIONS, steps)
    path = name.removeprefix("local-dir:") + "/open_clip_model.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)


def test_clipsim_ranks_each_matching_caption_above_the_others_with_a_fitted_clip(tmp_path):
    videos = distinct_videos()
    local = build_tiny_open_clip(tmp_path / "clip")
    fine_tune_clip(local, videos)
    clipsim = ClipSim(ClipSimConfig(model=local, pretrained=None), CPU)  # the loader a user's model takes
    for i, video in enumerate(videos):
        own = clipsim.score([video], [CAPTIONS[i]])[0]
        others = [clipsim.score([video], [c])[0] for j, c in enumerate(CAPTIONS) if j != i]
        assert own > max(others), (i, own, others)
    # the score is the mean over frames of the text-frame cosine
    frames, text = clipsim.embed_frames(videos[0]), clipsim.embed_text([CAPTIONS[0]])[0]
    direct = np.mean([f @ text / np.linalg.norm(f) / np.linalg.norm(text) for f in frames.astype(np.float64)])
    assert clipsim.score([videos[0]], [CAPTIONS[0]])[0] == pytest.approx(direct, abs=1e-6)
    assert clipsim_from_embeddings(np.array([[1.0, 0], [0, 2.0]]), np.array([3.0, 0])) == pytest.approx(0.5)


def test_a_missing_clip_names_the_clipsim_key(tmp_path):
    with pytest.raises(MissingModelError, match=r"^clipsim\.pretrained: .*neither a checkpoint file"):
        ClipSim(ClipSimConfig(model="ViT-B-32", pretrained=str(tmp_path / "none.pt")), CPU)
    with pytest.raises(MissingModelError, match=r"^clipsim\.model: open_clip has no model"):
        ClipSim(ClipSimConfig(model="no-such-clip", pretrained=None), CPU)


# ---- subject consistency ----


def test_consistency_formula_on_known_embeddings():
    e0, e1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    # frame 1 equals frame 0 (both terms 1), frame 2 is orthogonal to both (both 0): mean (1 + 0) / 2
    assert consistency_from_embeddings(np.stack([e0, e0, e1])) == pytest.approx(0.5)
    # negative cosines count as 0, as in VBench
    assert consistency_from_embeddings(np.stack([e0, -e0])) == pytest.approx(0.0)
    assert consistency_from_embeddings(e0[None]) is None


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    return SubjectConsistency(build_tiny_dinov2(tmp_path_factory.mktemp("dinov2")), CPU)


def test_subject_consistency_is_one_for_a_still_video_and_lower_shuffled_or_noisy(dinov2):
    moving = moving_video(3, frames=8, size=64)
    still = np.repeat(moving[:1], 8, axis=0)
    shuffled = moving[np.random.default_rng(0).permutation(8)]
    noise = np.random.default_rng(1).integers(0, 256, moving.shape, dtype=np.uint8)
    s_still, s_moving, s_shuffled, s_noise = dinov2.score([still, moving, shuffled, noise])
    assert s_still == pytest.approx(1.0, abs=1e-5)
    assert s_shuffled < s_still and s_noise < s_still and s_moving < s_still
    # the score from the embeddings, by the formula written out
    e = dinov2.embed(shuffled).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    terms = [(max(0, e[i] @ e[0]) + max(0, e[i] @ e[i - 1])) / 2 for i in range(1, len(e))]
    assert s_shuffled == pytest.approx(sum(terms) / len(terms), abs=1e-6)


def test_a_missing_dinov2_names_the_consistency_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModelError, match=r"^consistency\.model: cannot load"):
        SubjectConsistency(str(tmp_path / "no-dinov2"), CPU)


# ---- motion smoothness and flicker ----


def test_frozen_ramping_and_alternating_videos():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, (16, 16, 3))
    frozen = np.repeat(a[None], 6, axis=0).astype(np.uint8)
    ramp = np.stack([a + 10 * k for k in range(6)]).astype(np.uint8)  # brighter by 10 every frame
    b = a + 60
    alternating = np.stack([a, b] * 3).astype(np.uint8)
    stats = {
        name: frame_statistics(v) for name, v in [("frozen", frozen), ("ramp", ramp), ("alt", alternating)]
    }
    assert stats["frozen"] == {"frame_diff": 0.0, "temporal_flickering": 1.0, "flicker": 0.0}
    assert stats["ramp"]["frame_diff"] == pytest.approx(10 / 255) and stats["ramp"]["flicker"] == 0.0
    assert stats["alt"]["frame_diff"] == pytest.approx(60 / 255) and stats["alt"]["flicker"] == 1.0
    assert stats["alt"]["temporal_flickering"] == pytest.approx(1 - 60 / 255)
    smooth = frame_statistics(moving_video(0, frames=8, size=32))
    assert smooth["flicker"] < stats["alt"]["flicker"]
    # changes at or under the threshold are noise, not flicker
    small = np.stack([a, a + 8] * 3).astype(np.uint8)
    assert frame_statistics(small, reversal_threshold=8.0)["flicker"] == 0.0
    assert frame_statistics(small, reversal_threshold=7.0)["flicker"] == 1.0


def test_the_motion_scorer_sees_a_frozen_video_still_and_a_moving_one_move():
    frozen = np.repeat(moving_video(0, frames=1, size=64), 8, axis=0)
    x = np.arange(96)
    texture = ((np.sin(x[:, None] / 3.0) * np.cos(x[None, :] / 5.0) + 1) * 120).astype(np.uint8)
    panning = np.stack([np.repeat(texture[:64, 2 * k : 2 * k + 64, None], 3, axis=2) for k in range(8)])
    scorer = Smoothness()
    still, moving = scorer.score(frozen, fps=8.0), scorer.score(panning, fps=8.0)
    assert still["motion"] < 1e-3 and still["frame_diff"] == 0.0
    assert moving["motion"] > 10 * max(still["motion"], 1e-4)
