"""Data sets: real MNIST / Fashion-MNIST facts, the digits default, bad files, folders, safe CIFAR-10."""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffkit.data import (CIFAR10_NAMES, FASHION_MNIST_NAMES, InMemoryImageDataset, download_file,
                          load_dataset, make_loader, read_cifar10_batch, read_idx, resize_images)
from diffkit.errors import DiffkitError

DATA = Path(os.environ.get("DIFFKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MNIST, FASHION = DATA / "mnist", DATA / "fashion-mnist"
needs_mnist = pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="MNIST files absent")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST files absent")

# Sanity facts published with the data (/work/shared/data/README.md).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def assert_one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message and message
    for needle in needles:
        assert str(needle) in message, (needle, message)


def pixel_moments(dataset) -> tuple[float, float]:
    """Mean and std of all pixels scaled to [0, 1]: the loader's first batch is checked to be the stored
    pixels' image (uint8 v -> v / 127.5 - 1), then the moments come from a histogram of all stored pixels
    (exact; walking 60000 items through the loader took 2.4 s of a 2.7 s test)."""
    images, _ = next(iter(make_loader(dataset, batch_size=1000, shuffle=False)))
    assert torch.equal(images, dataset.images[:1000].to(torch.float32) / 127.5 - 1.0)
    counts = sum(torch.bincount(chunk.reshape(-1).long(), minlength=256).double()
                 for chunk in dataset.images.split(10000))
    unit = torch.arange(256, dtype=torch.float64) / 255
    count = counts.sum()
    mean = float((counts * unit).sum() / count)
    return mean, float((counts * unit ** 2).sum() / count - mean ** 2) ** 0.5


# ------------------------------------------------------------------------- real data
@needs_mnist
def test_mnist_matches_published_facts():
    train = load_dataset("mnist", MNIST, train=True)
    test = load_dataset("mnist", MNIST, train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert (train.channels, train.img_size, train.num_classes) == (1, 28, 10)
    assert train.label_counts() == MNIST_TRAIN_COUNTS
    assert test.label_counts() == MNIST_TEST_COUNTS
    mean, std = pixel_moments(train)
    assert mean == pytest.approx(0.1307, abs=5e-5) and std == pytest.approx(0.3081, abs=5e-5)
    image, label = train[0]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28) and isinstance(label, int)
    assert label == 5  # the first MNIST training digit is a 5
    assert image.min() == -1.0 and image.max() == 1.0


@needs_mnist
def test_mnist_padded_to_32_keeps_the_digit_centred():
    native = load_dataset("mnist", MNIST, train=False)
    padded = load_dataset("mnist", MNIST, train=False, img_size=32)
    assert padded.img_size == 32 and len(padded) == 10000
    assert torch.equal(padded.images[:, :, 2:30, 2:30], native.images)
    assert padded.images[:, :, :2].sum() == 0 and padded.images[:, :, :, 30:].sum() == 0
    rgb = load_dataset("mnist", MNIST, train=False, channels=3)
    assert rgb.channels == 3 and torch.equal(rgb.images[:, 1:2], native.images)


@needs_fashion
def test_fashion_mnist_matches_published_facts():
    train = load_dataset("fashion-mnist", FASHION, train=True)
    test = load_dataset("fashion-mnist", FASHION, train=False)
    assert train.label_counts() == [6000] * 10 and test.label_counts() == [1000] * 10
    assert train.class_names == FASHION_MNIST_NAMES and train.class_names[9] == "Ankle boot"
    mean, std = pixel_moments(train)
    assert mean == pytest.approx(0.2860, abs=5e-5) and std == pytest.approx(0.3530, abs=5e-5)


# ------------------------------------------------------------------------- digits
def test_digits_default():
    from sklearn.datasets import load_digits

    dataset = load_dataset()
    assert len(dataset) == 1797 and dataset.num_classes == 10 and dataset.img_size == 16
    image, label = dataset[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert sum(dataset.label_counts()) == 1797 and min(dataset.label_counts()) >= 170
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert batch.min() == -1.0 and batch.max() > 0.9  # black background, near-white strokes

    # At the native 8x8 size the 17 gray levels map exactly to v * 255 / 16, scaled to [-1, 1].
    bunch = load_digits()
    native = load_dataset("digits", img_size=8)
    expected = torch.from_numpy(np.rint(bunch.images * 255 / 16) / 127.5 - 1).float()
    assert torch.allclose(torch.stack([native[i][0][0] for i in range(1797)]), expected, atol=1e-6)
    assert native.labels.tolist() == bunch.target.tolist()

    # The 16x16 upscale is smooth and faithful: 2x2 block means give back the 8x8 glyphs.
    pooled = torch.nn.functional.avg_pool2d(dataset.images.float(), 2)[:, 0] / 255 * 16
    assert (pooled - torch.from_numpy(bunch.images).float()).abs().mean() < 0.8  # of 16 levels
    blocks = dataset.images.float().unfold(2, 2, 2).unfold(3, 2, 2).reshape(-1, 4)
    inked = blocks.max(1).values > 0
    constant = (blocks.max(1).values == blocks.min(1).values) & inked
    assert constant.sum() < 0.01 * inked.sum()  # not blocky: pixel repetition would make all constant


def test_digits_are_not_flipped_by_default_and_flip_on_request():
    plain = load_dataset("digits")
    assert all(torch.equal(plain[i][0], plain.images[i].float() / 127.5 - 1) for i in range(50))
    flipping = load_dataset("digits", hflip=True)
    loader = make_loader(flipping, batch_size=64, shuffle=False, seed=3)
    images, _ = next(iter(loader))
    original = plain.images[:64].float() / 127.5 - 1
    same = [torch.equal(a, b) for a, b in zip(images, original)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(images, original)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(m and not s for s, m in zip(same, mirrored)) < 54  # about half are flipped


def test_loader_is_reproducible_from_its_seed():
    dataset = load_dataset("digits", hflip=True)

    def batches(seed, workers=0):
        return [(x.clone(), y.clone()) for x, y in make_loader(dataset, 256, shuffle=True, seed=seed,
                                                                num_workers=workers, drop_last=True)]

    first, again, other = batches(1), batches(1), batches(2)
    assert len(first) == 1797 // 256
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][1], other[0][1])
    workers_a, workers_b = batches(5, workers=2), batches(5, workers=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(workers_a, workers_b))



def test_loader_pins_memory_for_cuda_only():
    dataset = load_dataset("digits", img_size=8)
    assert make_loader(dataset, 16, device="cuda").pin_memory  # asynchronous host-to-GPU copies
    assert not make_loader(dataset, 16, device="cpu").pin_memory
    assert not make_loader(dataset, 16).pin_memory


# ------------------------------------------------------------------------- IDX errors
def write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes, compress: bool = True):
    raw = struct.pack(f">I{len(shape)}I", magic, *shape) + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist_dir(root: Path, n: int = 5, labels_n: int | None = None, image_magic: int = 2051) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    images = np.arange(n * 28 * 28, dtype=np.uint64).astype(np.uint8).tobytes()
    write_idx(root / "t10k-images-idx3-ubyte.gz", image_magic, (n, 28, 28), images)
    labels_n = n if labels_n is None else labels_n
    write_idx(root / "t10k-labels-idx1-ubyte.gz", 2049, (labels_n,), bytes(i % 10 for i in range(labels_n)))
    return root


def test_small_idx_files_parse(tmp_path):
    root = write_mnist_dir(tmp_path / "m", n=7)
    dataset = load_dataset("mnist", root, train=False)
    assert len(dataset) == 7 and dataset.labels.tolist() == list(range(7))
    assert dataset.images[1, 0, 0, 0] == (28 * 28) % 256  # row-major pixel bytes after the header
    raw = tmp_path / "raw"
    write_idx(raw, 2049, (3,), b"\x01\x02\x03", compress=False)
    assert read_idx(raw, 2049).tolist() == [1, 2, 3]


def test_truncated_gzip_is_a_one_line_error(tmp_path):
    root = write_mnist_dir(tmp_path / "m")
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("mnist", root, train=False)
    assert_one_line_error(excinfo, path)


def test_wrong_magic_is_a_one_line_error(tmp_path):
    root = write_mnist_dir(tmp_path / "m", image_magic=2049)
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("mnist", root, train=False)
    assert_one_line_error(excinfo, root / "t10k-images-idx3-ubyte.gz", "2049", "2051")


@pytest.mark.parametrize("case", ["missing_dir", "missing_file", "count_mismatch", "short_body", "garbage"])
def test_other_bad_idx_inputs(tmp_path, case):
    root = write_mnist_dir(tmp_path / "m", labels_n=4 if case == "count_mismatch" else None)
    needle = root
    if case == "missing_dir":
        root = needle = tmp_path / "nowhere"
    elif case == "missing_file":
        needle = root / "t10k-labels-idx1-ubyte.gz"
        needle.unlink()
    elif case == "short_body":
        needle = root / "t10k-images-idx3-ubyte.gz"
        write_idx(needle, 2051, (5, 28, 28), b"\x00" * 100)
    elif case == "garbage":
        needle = root / "t10k-labels-idx1-ubyte.gz"
        needle.write_bytes(b"no")
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("mnist", root, train=False)
    assert_one_line_error(excinfo, needle)


# ------------------------------------------------------------------------- image folder
def test_folder_dataset_from_pngs(tmp_path):
    from PIL import Image

    colours = {"zebra": (255, 0, 0), "ant": (0, 128, 255)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i, size in enumerate([(12, 12), (20, 10), (12, 12)]):
            Image.new("RGB", size, colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")

    dataset = load_dataset("folder", tmp_path, img_size=12)
    assert dataset.class_names == ("ant", "zebra")  # sorted sub-folder names
    assert len(dataset) == 6 and dataset.label_counts() == [3, 3]
    assert (dataset.channels, dataset.img_size) == (3, 12)
    image, label = dataset[0]
    assert label == 0 and image.shape == (3, 12, 12)
    assert torch.allclose(image[:, 5, 5], torch.tensor([0, 128, 255]) / 127.5 - 1)
    assert torch.equal(dataset.images[3, :, 0, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))

    gray = load_dataset("folder", tmp_path, img_size=8, channels=1)
    assert gray.channels == 1 and gray.img_size == 8
    # Pillow's L: 299/1000 R + 587/1000 G + 114/1000 B, rounded.
    assert gray.images[3, 0, 4, 4].item() == round(0.299 * 255)
    assert gray.images[0, 0, 4, 4].item() == round(0.587 * 128 + 0.114 * 255)

    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("folder", tmp_path)  # sizes differ and no img_size given
    assert_one_line_error(excinfo, "img_size")


def test_grey_folders_without_img_size_and_16_bit_pngs(tmp_path):
    """channels=1 without img_size compared (H, W) with (H, W, 1) and refused every second image;
    16-bit grey PNGs came out white (Pillow's conversion to L clips them)."""
    from PIL import Image
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63000 of 65535
    for i in range(2):
        Image.fromarray(ramp).save(tmp_path / f"{i}.png")
    assert Image.open(tmp_path / "0.png").mode.startswith("I")
    for channels in (1, 3):
        data = load_dataset("folder", tmp_path, channels=channels)
        assert tuple(data.images.shape) == (2, channels, 8, 8)
        expected = torch.from_numpy(np.rint(ramp * 255.0 / 65535.0).astype(np.uint8))
        assert torch.equal(data.images[1, 0], expected)


def test_rgb_to_grey_is_pillows_l_exactly_and_a_forged_idx_header_is_one_line(tmp_path):
    import gzip
    import struct

    from PIL import Image

    from diffkit.data import convert_channels, read_idx
    rgb = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pillow = np.asarray(Image.fromarray(rgb[0].permute(1, 2, 0).numpy(), "RGB").convert("L"))
    assert np.array_equal(convert_channels(rgb, 1)[0, 0].numpy(), pillow)
    forged = tmp_path / "x.gz"  # 2^31 x 2^31 x 4 bytes: the int64 product wrapped to 0 = the empty body
    forged.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 2**31, 2**31, 4)))
    with pytest.raises(DiffkitError) as excinfo:
        read_idx(forged, 2051)
    assert_one_line_error(excinfo, "holds 0 data bytes")


def test_folder_errors(tmp_path):
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("folder", tmp_path / "missing")
    assert_one_line_error(excinfo, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffkitError):
        load_dataset("folder", tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("folder", tmp_path / "bad", img_size=8)
    assert_one_line_error(excinfo, tmp_path / "bad" / "x.png")


# ------------------------------------------------------------------------- CIFAR-10
def write_cifar_dir(root: Path, per_batch: int = 4, protocol: int = 2) -> Path:
    """Batches in the python-version format: {b'data': uint8 (N, 3072), b'labels': [...], ...}."""
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": name.encode(), b"labels": [(index + j) % 10 for j in range(per_batch)],
                 b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{j}.png".encode() for j in range(per_batch)]}
        with open(batches / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_format(tmp_path, protocol):
    batches = write_cifar_dir(tmp_path, protocol=protocol)
    train = load_dataset("cifar10", tmp_path, train=True)
    test = load_dataset("cifar10", batches, train=False)
    assert (len(train), len(test)) == (20, 4)
    assert (train.channels, train.img_size, train.class_names) == (3, 32, CIFAR10_NAMES)
    with open(batches / "data_batch_2", "rb") as handle:
        reference = pickle.load(handle, encoding="bytes")  # our own trusted file
    n, c, y, x = 1, 2, 7, 30  # row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    assert train.images[4 + n, c, y, x] == reference[b"data"][n, c * 1024 + y * 32 + x]
    assert train.labels[4:8].tolist() == reference[b"labels"]
    resized = load_dataset("cifar10", tmp_path, train=False, img_size=16)
    assert resized.img_size == 16


def test_cifar10_missing_or_malformed(tmp_path):
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_one_line_error(excinfo, "data_batch_1")
    batches = write_cifar_dir(tmp_path)
    with open(batches / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("cifar10", tmp_path, train=False)
    assert_one_line_error(excinfo, batches / "test_batch", "3072")


class _Exploit:
    """Pickles to a call of os.system when loaded by an unrestricted unpickler."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _EvalExploit:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return eval, (f"open({str(self.path)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("make", ["system_top", "system_nested", "eval_nested"])
def test_malicious_cifar_pickle_is_refused_without_running(tmp_path, make):
    batches = write_cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    payload = {"system_top": _Exploit(f"touch {marker}"),
               "system_nested": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Exploit(f"touch {marker}")]},
               "eval_nested": {b"labels": [0], b"data": _EvalExploit(marker)}}[make]
    with open(batches / "data_batch_3", "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    with pytest.raises(DiffkitError) as excinfo:
        load_dataset("cifar10", tmp_path, train=True)
    assert_one_line_error(excinfo, batches / "data_batch_3", "forbidden")
    assert not marker.exists()
    with pytest.raises(DiffkitError):
        read_cifar10_batch(batches / "data_batch_3")
    assert not marker.exists()


# ------------------------------------------------------------------------- helpers
def test_in_memory_dataset_checks_and_scaling():
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    dataset = InMemoryImageDataset(images, [0, 1, 2], class_names=["a", "b", "c"])
    assert dataset[0][0].unique().tolist() == [-1.0] and dataset[1][0].unique().tolist() == [1.0]
    assert dataset[2][0][0, 0, 0].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    with pytest.raises(DiffkitError):
        InMemoryImageDataset(images.float(), [0, 1, 2])
    with pytest.raises(DiffkitError):
        InMemoryImageDataset(images, [0, 1])
    with pytest.raises(DiffkitError):
        InMemoryImageDataset(images, [0, 1, 5], num_classes=3)


def test_resize_pad_and_interpolate():
    images = torch.full((2, 1, 4, 4), 200, dtype=torch.uint8)
    padded = resize_images(images, 8, "pad")
    assert padded[:, :, 2:6, 2:6].eq(200).all() and padded.sum() == 200 * 32
    assert resize_images(images, 9, "bicubic").eq(200).all()  # a constant image stays constant
    with pytest.raises(DiffkitError):
        resize_images(images, 7, "pad")


def test_bad_front_door_arguments():
    for kwargs in ({"name": "imagenet"}, {"name": "digits", "img_size": 0}, {"name": "digits", "channels": 2},
                   {"name": "digits", "resize": "smart"}):
        with pytest.raises(DiffkitError) as excinfo:
            load_dataset(**kwargs)
        assert_one_line_error(excinfo, list(kwargs.values())[-1])
    with pytest.raises(DiffkitError):
        make_loader(load_dataset("digits", img_size=8), batch_size=0)


def test_download_file_verifies_checksum_and_writes_atomically(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"diffusion" * 1000)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DiffkitError) as excinfo:
        download_file(source.as_uri(), dest, "0" * 64)
    assert_one_line_error(excinfo, sha)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left behind
    assert download_file(source.as_uri(), dest, sha).read_bytes() == source.read_bytes()
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    assert download_file((tmp_path / "gone").as_uri(), dest, sha) == dest  # present and valid: no fetch
    with pytest.raises(DiffkitError):
        download_file((tmp_path / "gone").as_uri(), tmp_path / "other.bin", md5, "md5")


# ------------------------------------------------------------------------- grids
def test_the_grid_writer_checks_its_input_and_scales_uint8():
    import warnings as _warnings

    from diffkit.images import make_grid, png_bytes
    images = torch.linspace(-1, 1, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    grid = make_grid(images, nrow=2, padding=1, pad_value=-1.0)
    assert grid.shape == (4, 7, 3) and grid[0, 0, 0] == 0  # padding of -1 is black
    assert np.array_equal(grid[1:3, 1:3], ((images[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy())
    as_bytes = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)  # uint8 0..255, not [-1, 1]
    assert make_grid(as_bytes, padding=0)[0, :, 0].tolist() == [0, 255]
    for call, match in ((lambda: make_grid(images[:0]), "batch >= 1"), (lambda: make_grid(images, nrow=2.5), "nrow"),
                        (lambda: make_grid(images, pad_value=5), "pad_value=5"),
                        (lambda: make_grid(images, padding=-1), "padding=-1"),
                        (lambda: make_grid(torch.zeros(1, 2, 2, 2)), "1 or 3 channels"),
                        (lambda: png_bytes(grid, scale=0), "scale=0"),
                        (lambda: png_bytes(grid, scale=1.5), "scale=1.5")):
        with pytest.raises(DiffkitError, match=match):
            call()
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        nan = make_grid(torch.full((1, 1, 2, 2), float("nan")), padding=0)
    assert nan.max() == 0 and "NaN" in str(caught[0].message)


class _WorkerSignals(torch.utils.data.Dataset):
    """Each item: the SIGINT and SIGTERM handlers of the process that reads it (SIG_IGN / SIG_DFL as ints)."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import signal
        return torch.tensor([int(signal.getsignal(signal.SIGINT) == signal.SIG_IGN),
                             int(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)])


def test_loader_workers_ignore_sigint_and_sigterm_and_the_main_process_keeps_its_handlers():
    """A signal to the whole process group must reach only the main process (which checkpoints): make_loader's
    workers ignore SIGINT and SIGTERM. (The process-group SIGTERM test of test_reliability.py passes without this
    whenever the main process stops before it fetches the next batch: it cannot tell.)"""
    import signal
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    in_workers = next(iter(make_loader(_WorkerSignals(), batch_size=2, shuffle=False, num_workers=1)))
    assert in_workers.tolist() == [[1, 1], [1, 1]]
    in_main = next(iter(make_loader(_WorkerSignals(), batch_size=2, shuffle=False)))
    own = [int(handler == signal.SIG_IGN) for handler in before]  # [0, 0] unless the runner itself ignores them
    assert in_main.tolist() == [own, own]  # num_workers=0: read by this process, whose handlers are its own
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
