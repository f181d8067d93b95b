"""Batched extraction from tensors, batch iterables and PNG folders; cached reference statistics."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.errors import DiffkitError
from diffkit.metrics import (FIDInceptionV3, cached_reference_statistics, extract_features,
                             inception_metrics)


def pixel_stats(batch):
    """A transparent extractor: per-image mean and max of the pixels."""
    flat = batch.flatten(1)
    return torch.stack([flat.mean(1), flat.max(1).values], dim=1)


def write_pngs(folder, arrays):
    folder.mkdir(exist_ok=True)
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"img_{index:03d}.png")


def test_tensor_iterable_and_folder_sources_agree(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(23, 8, 8), dtype=np.uint8)
    write_pngs(tmp_path / "imgs", list(pixels))
    images = torch.from_numpy(pixels[:, None].astype(np.float32)) / 127.5 - 1
    expected = np.stack([images.flatten(1).double().mean(1).numpy(),
                         images.flatten(1).double().max(1).values.numpy()], axis=1)
    from_tensor = extract_features(pixel_stats, images, batch_size=5, progress=False)
    from_batches = extract_features(pixel_stats, [(images[i:i + 4], torch.zeros(4))
                                                  for i in range(0, 23, 4)], progress=False)
    from_folder = extract_features(pixel_stats, tmp_path / "imgs", batch_size=7, progress=False)
    for got in (from_tensor, from_batches, from_folder):
        assert got.shape == (23, 2) and got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_sixteen_bit_grey_pngs_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(1, 8, 8)
    folder = tmp_path / "wide"
    folder.mkdir()
    Image.fromarray(ramp[0]).save(folder / "ramp.png")          # a 16-bit grey PNG
    with Image.open(folder / "ramp.png") as image:
        assert image.mode.startswith("I")
    got = extract_features(lambda b: b.flatten(1), folder, progress=False)
    np.testing.assert_allclose(got[0], ramp.ravel() / 65535 * 2 - 1, atol=1e-6)


def test_uint8_tensors_are_scaled_and_other_integers_refused():
    pixels = torch.arange(0, 256, 4, dtype=torch.uint8).reshape(1, 1, 8, 8)
    got = extract_features(lambda b: b.flatten(1), pixels, progress=False)
    np.testing.assert_allclose(got[0], pixels.double().flatten().numpy() / 127.5 - 1, atol=1e-6)
    with pytest.raises(DiffkitError, match="dtype int64 are not allowed"):
        extract_features(lambda b: b.flatten(1), pixels.long(), progress=False)


def test_tuple_outputs_are_kept_apart():
    images = torch.linspace(-1, 1, 6 * 4).reshape(6, 1, 2, 2)
    first, second = extract_features(lambda b: (b.flatten(1), -b.flatten(1)[:, :1]), images,
                                     batch_size=4, progress=False)
    np.testing.assert_allclose(first, images.flatten(1).numpy(), rtol=1e-6)
    assert second.shape == (6, 1)


def test_progress_bar_can_be_turned_off(capsys):
    images = torch.zeros(4, 1, 2, 2)
    extract_features(pixel_stats, images, batch_size=1, progress=False)
    assert capsys.readouterr().err == ""
    extract_features(pixel_stats, images, batch_size=1, progress=True, description="probe")
    assert "probe" in capsys.readouterr().err


def test_mixed_image_sizes_give_a_one_line_error(tmp_path):
    folder = tmp_path / "mixed"
    write_pngs(folder, [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)])
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(folder / "odd.png")
    with pytest.raises(DiffkitError) as err:
        extract_features(pixel_stats, folder, progress=False)
    assert "\n" not in str(err.value)
    assert "odd.png is 8x9" in str(err.value) and "same size" in str(err.value)


def test_bad_sources_give_one_line_errors(tmp_path):
    with pytest.raises(DiffkitError, match="does not exist"):
        extract_features(pixel_stats, tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffkitError, match="no .png files"):
        extract_features(pixel_stats, tmp_path / "empty", progress=False)
    with pytest.raises(DiffkitError, match="image tensor shape"):
        extract_features(pixel_stats, torch.zeros(3, 4), progress=False)
    with pytest.raises(DiffkitError, match="is empty"):
        extract_features(pixel_stats, [], progress=False)


def test_reference_statistics_are_cached_by_name_and_content(tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(b"version 1")
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12.0).reshape(6, 2) * (len(calls))

    first = cached_reference_statistics("toy", [source], compute, cache_dir=tmp_path / "cache")
    again = cached_reference_statistics("toy", [source], compute, cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    np.testing.assert_array_equal(first.mu, again.mu)
    np.testing.assert_allclose(first.mu, [5.0, 6.0])
    saved = list((tmp_path / "cache" / "stats").glob("toy-inception-pool3-*.npz"))
    assert len(saved) == 1
    source.write_bytes(b"version 2")  # new content, new key, recomputed
    changed = cached_reference_statistics("toy", [source], compute, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and changed.mu[0] == pytest.approx(10.0)
    with pytest.raises(DiffkitError, match="dataset name"):
        cached_reference_statistics("../x", [source], compute, cache_dir=tmp_path)


def test_inception_metrics_end_to_end_with_random_weights():
    torch.manual_seed(0)
    model = FIDInceptionV3(resize_input=False).eval()
    images = torch.rand(4, 3, 75, 75) * 2 - 1
    with pytest.warns(RuntimeWarning, match="rank-deficient"):
        result = inception_metrics(images, images, model=model, batch_size=2, progress=False,
                                   is_splits=2)
    assert result.fid == pytest.approx(0.0, abs=1e-9)
    assert result.stats.mu.shape == (2048,) and result.stats.num_samples == 4
    assert 1.0 - 1e-9 <= result.inception_score.mean <= 2.0 + 1e-9  # two samples per split
