"""Rectified flow against hand derivations: t = 0 is data, t = 1 is noise, x_t = (1 - t) x0 + t noise,
the velocity is noise - x0, and the sampler walks that very path back from noise to data."""

import math

import numpy as np
import pytest
import torch

from training.flow import auto_shift, interpolate, sample_time, shift_time, velocity_target
from training.sampler import sample


def pair(batch: int = 3, shape=(2, 3, 4, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *shape, generator=g), torch.randn(batch, *shape, generator=g)


def test_the_path_runs_from_data_at_0_to_noise_at_1_with_one_time_per_sample():
    x0, noise = pair()
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = interpolate(x0, noise, t).numpy()
    a, n = x0.numpy(), noise.numpy()
    np.testing.assert_allclose(xt[0], a[0], rtol=0, atol=1e-6)  # t = 0: the data
    np.testing.assert_allclose(xt[1], 0.75 * a[1] + 0.25 * n[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(xt[2], n[2], rtol=0, atol=1e-6)  # t = 1: the noise


def test_the_velocity_is_noise_minus_data_the_time_derivative_of_the_path():
    x0, noise = pair()
    v = velocity_target(x0, noise)
    np.testing.assert_allclose(v.numpy(), noise.numpy() - x0.numpy(), rtol=0, atol=1e-6)
    t, h = torch.full((3,), 0.4, dtype=torch.float64), 1e-3
    x0, noise = x0.double(), noise.double()
    slope = (interpolate(x0, noise, t + h) - interpolate(x0, noise, t - h)) / (2 * h)
    torch.testing.assert_close(slope, velocity_target(x0, noise))
    # and stepping back along it from any time lands on the data
    torch.testing.assert_close(interpolate(x0, noise, t) - 0.4 * velocity_target(x0, noise), x0)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_sampler_follows_the_training_path_from_noise_back_to_the_data(method, shift):
    """A model that answers the true velocity of one known clip: the sampler must start at the noise, see
    x_t = interpolate(x0, noise, t) at every time it asks about, and end at x0. A sign or direction error
    in the flow convention, or a sampler walking the other way, ends somewhere else."""
    x0, noise = pair(2, (4, 2, 4, 4))
    text, mask = torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    seen = []

    def oracle(x, t, text, text_mask, **extra):
        seen.append(float(t[0]))
        torch.testing.assert_close(x, interpolate(x0, noise, t), atol=1e-5, rtol=1e-5)
        return velocity_target(x0, noise)

    out = sample(oracle, text, mask, tuple(x0.shape[1:]), steps=5, shift=shift, method=method, noise=noise)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    assert seen[0] == 1.0 and all(0 < t <= 1 for t in seen)


def test_shift_time_moves_times_towards_noise_and_keeps_the_ends():
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    # s t / (1 + (s - 1) t) by hand at s = 3: 0.5 -> 1.5 / 2, 0.1 -> 0.3 / 1.2, 0.9 -> 2.7 / 2.8
    expected = torch.tensor([0.0, 0.25, 0.75, 2.7 / 2.8, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 3.0), expected)
    torch.testing.assert_close(shift_time(t, 1.0), t)  # no shift
    assert (shift_time(t[1:-1], 3.0) > t[1:-1]).all()


def test_auto_shift_grows_with_the_square_root_of_the_tokens_within_its_bounds():
    assert auto_shift(1024) == 1.0 and auto_shift(4096) == 2.0 and auto_shift(9216) == 3.0
    assert auto_shift(100) == 1.0  # fewer tokens than the base: never below 1
    assert auto_shift(1024 * 100) == 8.0  # sqrt(100) = 10, capped
    assert auto_shift(256, base_tokens=64) == 2.0 and auto_shift(1024 * 100, max_shift=20.0) == 10.0


def test_training_times_are_logit_normal_then_shifted():
    """The share of times below shift_time(sigmoid(z)) is P(Z <= z), Z ~ N(mean, std): the
    distribution, checked at three quantiles on 40000 draws."""
    shift, mean, std = 2.5, 0.3, 0.8
    times = sample_time(40_000, shift, mean, std, generator=torch.Generator().manual_seed(0)).double()
    assert times.min() > 0 and times.max() < 1
    for z in (-1.0, 0.0, 1.0):
        threshold = shift_time(torch.sigmoid(torch.tensor(mean + std * z, dtype=torch.float64)), shift)
        share = float((times <= threshold).double().mean())
        assert share == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))), abs=0.01), z
    unshifted = sample_time(40_000, 1.0, 0.0, 1.0, generator=torch.Generator().manual_seed(1))
    assert float(unshifted.median()) == pytest.approx(0.5, abs=0.01)
    seeded = [sample_time(5, 3.0, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*seeded)
