"""The domain evaluator: MNIST accuracy, save/load, FD-classifier and its IS-like score."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffkit.errors import DiffkitError
from diffkit.metrics import (EvaluatorConfig, EvaluatorNet, classifier_frechet_distance,
                             classifier_score, evaluator_accuracy, load_evaluator, save_evaluator,
                             train_evaluator)

DATA = Path(os.environ.get("DIFFKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MNIST = DATA / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST test data not available")


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` records of a gzip IDX file (magic 2051 images, 2049 labels)."""
    with gzip.open(path, "rb") as handle:
        magic = int.from_bytes(handle.read(4), "big")
        ndim = magic & 0xFF
        dims = [int.from_bytes(handle.read(4), "big") for _ in range(ndim)]
        record = int(np.prod(dims[1:])) if ndim > 1 else 1
        data = np.frombuffer(handle.read(count * record), np.uint8)
    return data.reshape([count] + dims[1:])


def mnist(split: str, count: int):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(MNIST / f"{prefix}-images-idx3-ubyte.gz", count)
    labels = read_idx(MNIST / f"{prefix}-labels-idx1-ubyte.gz", count)
    return (torch.from_numpy(images.copy()).float()[:, None] / 127.5 - 1,
            torch.from_numpy(labels.astype(np.int64)))


@pytest.fixture(scope="module")
def trained():
    images, labels = mnist("train", 5000)
    return train_evaluator(images, labels, num_classes=10, epochs=1, seed=0)


@needs_mnist
def test_one_epoch_on_5000_mnist_images_beats_90_percent(trained):
    test_images, test_labels = mnist("test", 1000)
    assert evaluator_accuracy(trained, test_images, test_labels) > 0.90


@needs_mnist
def test_classifier_score_of_real_digits_is_high_and_fd_grows_with_noise(trained):
    """FD-classifier of 250 test digits against 250 others plus noise of scale 0, 0.3, 1: measured
    13.3, 30.3, 1037 (noise seeds 0-2: 30.3-31.6 at 0.3); with 500 against 500, at twice the cost,
    7.8, 25.6, 1021. 250 is above the 128 feature dimensions, so the covariances have full rank."""
    images, _ = mnist("test", 1000)
    score = classifier_score(trained, images, splits=5)
    assert 7.0 < score.mean <= 10.0  # confident, nearly balanced over 10 classes
    generator = torch.Generator().manual_seed(0)
    distances = [classifier_frechet_distance(
        trained, images[:250], images[250:500] + s * torch.randn(250, 1, 28, 28, generator=generator))
        for s in (0.0, 0.3, 1.0)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_training_is_deterministic_for_a_seed():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(64, 1, 8, 8, generator=generator) * 2 - 1
    labels = (images.mean(dim=(1, 2, 3)) > 0).long()
    a = train_evaluator(images, labels, 2, seed=3, config=EvaluatorConfig(1, 8, 2, (4, 8), 16))
    b = train_evaluator(images, labels, 2, seed=3, config=EvaluatorConfig(1, 8, 2, (4, 8), 16))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = EvaluatorNet(EvaluatorConfig(in_channels=3, image_size=16, num_classes=5,
                                       channels=(8, 16), feature_dim=32)).eval()
    save_evaluator(net, tmp_path / "eval.safetensors")
    loaded = load_evaluator(tmp_path / "eval.safetensors")
    assert loaded.config == net.config
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        features, logits = loaded.features_and_logits(x)
        torch.testing.assert_close(features, net.features(x))
        torch.testing.assert_close(logits, net(x))
    assert features.shape == (3, 32) and logits.shape == (3, 5)


def test_load_and_input_errors_are_one_line(tmp_path):
    with pytest.raises(DiffkitError, match="does not exist"):
        load_evaluator(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DiffkitError, match="not a diffkit evaluator"):
        load_evaluator(tmp_path / "other.safetensors")
    with pytest.raises(DiffkitError, match=r"expected \(batch, 1, 28, 28\)"):
        EvaluatorNet()(torch.zeros(2, 3, 28, 28))
    with pytest.raises(DiffkitError, match="labels span"):
        train_evaluator(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 5]), num_classes=3)
    # raw pixels (what a data set's .images holds) would train on the wrong scale: refused in one line
    with pytest.raises(DiffkitError, match="uint8 are not allowed"):
        train_evaluator(torch.full((4, 1, 8, 8), 200, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(DiffkitError, match=r"images span \[0, 255\]; allowed: floats in \[-1, 1\]"):
        train_evaluator(torch.linspace(0, 255, 256).reshape(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(DiffkitError, match="images span"):
        train_evaluator(torch.full((4, 1, 8, 8), float("nan")), torch.tensor([0, 1, 0, 1]), 2)
