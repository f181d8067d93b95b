"""Thresholding of the predicted x0 (Imagen, Saharia et al. 2022, Sec. 2.3), checked on a step
whose output is the thresholded x0 itself: DDIM from one time into clean data (t = -1) returns
x0_hat exactly, so the samples are the thresholded prediction, computed here independently."""
import numpy as np
import pytest
import torch

import diffkit
from diffkit import Denoiser, DiffkitError, NoiseSchedule

S = NoiseSchedule.linear(100)
GRID = torch.tensor([60.0, -1.0], dtype=torch.float64)
X0 = 3.0 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def fixed_x0(x, t):
    """A network predicting x0 (prediction_type="sample"): the same wide x0 for every input."""
    return X0.to(x.dtype)


DEN = Denoiser(fixed_x0, S, prediction_type="sample")
NOISE = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def imagen(x0: np.ndarray, ratio: float = 0.995, cap: float = np.inf) -> np.ndarray:
    flat = np.abs(x0.reshape(len(x0), -1))
    s = np.minimum(np.maximum(np.quantile(flat, ratio, axis=1), 1.0), cap).reshape(-1, 1, 1, 1)
    return np.clip(x0, -s, s) / s


def run(**kwargs):
    return diffkit.sample(DEN, NOISE.clone(), "ddim", grid=GRID, progress=False, **kwargs).numpy()


def test_without_thresholding_the_step_returns_the_prediction():
    np.testing.assert_allclose(run(), X0.numpy(), atol=1e-12)


def test_clip_bounds_x0():
    np.testing.assert_allclose(run(thresholding="clip"), np.clip(X0.numpy(), -1, 1), atol=1e-12)
    np.testing.assert_allclose(run(thresholding="clip", sample_max_value=2.0), np.clip(X0.numpy(), -2, 2),
                               atol=1e-12)


def test_dynamic_is_imagen_and_differs_from_clip():
    out = run(thresholding="dynamic")
    np.testing.assert_allclose(out, imagen(X0.numpy()), atol=1e-6)
    assert np.abs(out - np.clip(X0.numpy(), -1, 1)).max() > 0.5  # it is not clip in disguise
    np.testing.assert_allclose(run(thresholding="dynamic", dynamic_thresholding_ratio=0.9),
                               imagen(X0.numpy(), 0.9), atol=1e-6)
    # diffusers' sample_max_value caps s; at its default 1.0 dynamic thresholding is clip
    np.testing.assert_allclose(run(thresholding="dynamic", sample_max_value=1.5), imagen(X0.numpy(), cap=1.5),
                               atol=1e-6)
    np.testing.assert_allclose(run(thresholding="dynamic", sample_max_value=1.0), np.clip(X0.numpy(), -1, 1),
                               atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"thresholding": "dynamic", "sample_max_value": 0.5}, r"sample_max_value=0.5 is out of range"),
    ({"thresholding": "clip", "sample_max_value": 0.0}, r"sample_max_value=0.0 is out of range"),
    ({"thresholding": "dynamic", "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio=1.5"),
    ({"sample_max_value": 2.0}, "sample_max_value goes with thresholding='clip' or 'dynamic'"),
    ({"thresholding": "soft"}, "soft"),
])
def test_bad_threshold_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(DiffkitError, match=match) as err:
        run(**kwargs)
    assert "\n" not in str(err.value)


def test_a_learned_variance_survives_thresholding():
    """DDPM's learned-range variance (Improved DDPM eq. 15) must reach the sampler through the
    thresholding wrapper: with var_values = +1 the step's variance is beta, not beta-tilde."""
    def net(x, t):  # x0 inside [-1, 1] (clip changes nothing) and var_values = +1
        return torch.cat([0.5 * torch.tanh(x), torch.ones_like(x)], dim=1)

    den = Denoiser(net, S, prediction_type="sample", learned_variance=True)
    grid = torch.tensor([60.0, 59.0, 58.0, -1.0], dtype=torch.float64)
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    plain = diffkit.sample(den, x.clone(), "ddpm", grid=grid, seed=5, progress=False)
    clipped = diffkit.sample(den, x.clone(), "ddpm", grid=grid, seed=5, progress=False, thresholding="clip")
    torch.testing.assert_close(clipped, plain, rtol=0, atol=1e-12)
