"""Image data sets for diffkit: small, all in memory, images in [-1, 1].

Every data set is an :class:`InMemoryImageDataset`: a uint8 tensor ``(N, C, H, W)`` plus int
labels, scaled to float32 in ``[-1, 1]`` in ``__getitem__`` (the DDPM convention, Ho et al. 2020,
Sec. 3.3: "data consisting of integers in {0, ..., 255} scaled linearly to [-1, 1]"), with an
optional random horizontal flip (as DDPM used for CIFAR-10). One front door,
:func:`load_dataset`, serves these names:

``digits``         scikit-learn's bundled 8x8 handwritten digits (1797 images, gray levels
                   0..16, 10 classes), upscaled to 16x16 by bicubic interpolation. No download;
                   the default data set. It has no train/test split: ``train`` is ignored.
``mnist``          the original IDX gzip files (LeCun et al.), 60000 train / 10000 test, 28x28.
``fashion-mnist``  the same IDX layout (Xiao et al. 2017), 10 clothing classes.
``cifar10``        the "python version" pickle batches in ``cifar-10-batches-py``, 32x32 RGB.
                   Pickles can run code when loaded; diffkit loads them with a restricted
                   unpickler that only rebuilds dicts, lists, bytes and uint8 numpy arrays
                   (:func:`read_cifar10_batch`) and rejects anything else without running it.
``folder``         any folder of images; one class per sub-folder (sorted names), via Pillow.
``sines``          not images: generated time series (N, C, L) (:mod:`diffkit.timeseries`), as a
                   :class:`~diffkit.timeseries.SeriesDataset`; ``num_series``, ``seq_length``,
                   ``channels`` (default 5) set its size.
``series``         not images: the user's own time series, one .csv or .npy file (``data_dir``), cut
                   into windows of ``seq_length`` rows (:mod:`diffkit.series_files`).

``download_mnist``, ``download_fashion_mnist`` and ``download_cifar10`` fetch the canonical
files for online users, verify their checksums and write atomically; nothing in diffkit calls
them implicitly. :func:`make_loader` builds a seeded, reproducible ``DataLoader``.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import signal
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .checkpoint import hash_file
from .errors import DiffkitError, check_choice, check_range

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder", "sines", "series")
RESIZE_MODES = ("auto", "pad", "bilinear", "bicubic", "nearest")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

DIGIT_NAMES = tuple(str(d) for d in range(10))
# Fashion-MNIST label names (Xiao et al. 2017; /work/shared/data/README.md).
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot")
# CIFAR-10 label names, in label order (batches.meta of the python version).
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")

# Channels and classes of each named set, known without loading it (folder: RGB by default).
DATASET_CHANNELS = {"digits": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "folder": 3, "sines": 5}
DATASET_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10}
DATASET_IMG_SIZE = {"digits": 16, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}
SPLIT_DATASETS = ("mnist", "fashion-mnist", "cifar10")  # the named sets with a test split (digits has none)


# ---------------------------------------------------------------------------- the data set
_MASK64 = 2**64 - 1


def flip_coin(seed: int, index: int) -> bool:
    """A fair coin that depends only on (seed, index): the top bit of SplitMix64's output
    (Steele, Lea & Flood 2014) for the state seed + (index + 1) * golden-ratio increment."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return bool((z ^ (z >> 31)) >> 63)


class InMemoryImageDataset(Dataset):
    """Images held as one uint8 tensor; items are ``(float32 image in [-1, 1] (C,H,W), int label)``.

    Args:
        images: uint8 tensor ``(N, C, H, W)`` with 0 = black.
        labels: int tensor / sequence of length N with values in ``0..num_classes-1``.
        num_classes: number of classes (defaults to ``len(class_names)``).
        class_names: a name per class.
        hflip: flip each item left-right with probability 1/2. After :meth:`set_flip_seed`
            (which :func:`make_loader` calls each epoch) the coin is a pure function of the seed
            and the item's index, so the flips do not depend on the order of reading or on the
            number of DataLoader workers; before it, the coin comes from the global RNG.
    """

    def __init__(self, images: torch.Tensor, labels, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, hflip: bool = False):
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DiffkitError(f"images must be a uint8 tensor (N, C, H, W); got {images.dtype} of shape "
                               f"{tuple(images.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if labels.numel() != images.shape[0]:
            raise DiffkitError(f"{labels.numel()} labels for {images.shape[0]} images; need one label per image")
        if class_names is None:
            class_names = tuple(str(i) for i in range(num_classes or (int(labels.max()) + 1 if len(labels) else 0)))
        self.class_names = tuple(class_names)
        self.num_classes = int(num_classes if num_classes is not None else len(self.class_names))
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DiffkitError(f"labels span {int(labels.min())}..{int(labels.max())}; allowed: "
                               f"0..{self.num_classes - 1} for num_classes={self.num_classes}")
        self.images = images.contiguous()
        self.labels = labels
        self.hflip = bool(hflip)
        self._flip_seed: int | None = None

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def img_size(self) -> int:
        """Side length (images are square when loaded by :func:`load_dataset`)."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int):
        image = self.images[index].to(torch.float32) / 127.5 - 1.0
        if self.hflip and (flip_coin(self._flip_seed, int(index)) if self._flip_seed is not None
                           else bool(torch.rand(()) < 0.5)):
            image = image.flip(-1)
        return image, int(self.labels[index])

    def set_flip_seed(self, seed: int) -> None:
        """Make the flip coins a function of ``seed`` and the item index (reproducible flips)."""
        self._flip_seed = int(seed) % 2**64

    def label_counts(self) -> list[int]:
        """Number of images of each class, in class order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        return (f"InMemoryImageDataset(n={len(self)}, channels={self.channels}, img_size={self.img_size}, "
                f"num_classes={self.num_classes}, hflip={self.hflip})")


# ---------------------------------------------------------------------------- image helpers
def resize_images(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize a uint8 batch ``(N, C, H, W)`` to ``size x size``.

    ``pad`` centres the image on a black (0) canvas (MNIST 28 -> 32, as DDPM-on-MNIST code does);
    ``bilinear``/``bicubic`` interpolate with antialiasing (matters when shrinking), ``nearest``
    repeats pixels. Values are rounded and clamped back to 0..255.
    """
    check_range("img_size", size, 1, None, integer=True)
    check_choice("resize", mode, RESIZE_MODES[1:])
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    if mode == "pad":
        if height > size or width > size or (size - height) % 2 or (size - width) % 2:
            raise DiffkitError(f"resize='pad' cannot turn {height}x{width} into {size}x{size}; "
                               f"padding needs a larger size with an even difference (use bicubic)")
        top, left = (size - height) // 2, (size - width) // 2
        return F.pad(images, (left, size - width - left, top, size - height - top), value=0)
    out = []
    for chunk in images.split(4096):  # bounded memory for 60000-image sets
        x = chunk.to(torch.float32)
        if mode == "nearest":
            x = F.interpolate(x, size=(size, size), mode="nearest-exact")
        else:
            x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray -> RGB by repetition, RGB -> gray by ITU-R 601-2 luma exactly as Pillow's ``L`` computes
    it on uint8 pixels: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    have = images.shape[1]
    if channels == have:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)
        luma = ((images.to(torch.int64) * weights).sum(1, keepdim=True) + (1 << 15)) >> 16
        return luma.clamp_(0, 255).to(torch.uint8)
    raise DiffkitError(f"channels={channels} cannot be made from {have}-channel images; allowed: 1 or 3")


# ---------------------------------------------------------------------------- digits
def load_digits_dataset(img_size: int = 16, hflip: bool = False, resize: str = "bicubic") -> InMemoryImageDataset:
    """scikit-learn's 8x8 digits (UCI optdigits test part): 1797 images, levels 0..16.

    Levels are mapped to 0..255 (``v * 255 / 16``) and upscaled to ``img_size`` (16 by default)
    by antialiased bicubic interpolation, which turns the blocky 8x8 glyphs into smooth strokes.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DiffkitError("dataset='digits' needs scikit-learn (a diffkit dependency): pip install "
                           "scikit-learn") from None
    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    images = resize_images(images, img_size, "bicubic" if resize == "auto" else resize)
    return InMemoryImageDataset(images, torch.from_numpy(bunch.target), 10, DIGIT_NAMES, hflip)


# ---------------------------------------------------------------------------- IDX (MNIST)
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip or raw) and check its header.

    The header is big-endian: a magic number (``2051`` for images, ``2049`` for labels, i.e.
    type 0x08 = ubyte and the number of dimensions), then one uint32 size per dimension.
    Raises a one-line :class:`DiffkitError` naming ``path`` for a missing, truncated or
    malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"IDX file not found: {path}")
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DiffkitError(f"cannot read IDX file {path}: {err} (truncated or corrupt gzip?)") from None
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DiffkitError(f"{path} is not an IDX file: only {len(data)} bytes, header needs {header_len}")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise DiffkitError(f"{path} has IDX magic number {found}; expected {magic}")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = math.prod(shape)  # Python integers: a forged header cannot wrap around
    if len(data) - header_len != expected:
        raise DiffkitError(f"{path} holds {len(data) - header_len} data bytes; header shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def _find_file(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DiffkitError(f"missing file {directory / (stem + '.gz')} (nor {stem}); download it with "
                       f"diffkit.data.download_mnist / download_fashion_mnist")


def load_idx_dataset(directory: str | os.PathLike, train: bool = True, class_names: Sequence[str] = DIGIT_NAMES,
                     img_size: int | None = None, hflip: bool = False, resize: str = "auto") -> InMemoryImageDataset:
    """MNIST-layout IDX files in ``directory`` (gzip or not), checked and paired.

    ``img_size`` (default 28) > 28 with an even difference is reached by zero padding under
    ``resize='auto'`` (MNIST's background is 0), otherwise by antialiased bicubic resizing.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DiffkitError(f"data directory not found: {directory}")
    image_stem, label_stem = IDX_FILES[bool(train)]
    image_path, label_path = _find_file(directory, image_stem), _find_file(directory, label_stem)
    images, labels = read_idx(image_path, IDX_IMAGES_MAGIC), read_idx(label_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DiffkitError(f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= len(class_names):
        raise DiffkitError(f"{label_path} has label {int(labels.max())}; allowed: 0..{len(class_names) - 1}")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    if img_size is not None:
        if resize == "auto":
            grow = img_size - tensor.shape[-1]
            resize = "pad" if tensor.shape[-1] == tensor.shape[-2] and grow > 0 and grow % 2 == 0 else "bicubic"
        tensor = resize_images(tensor, img_size, resize)
    return InMemoryImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), len(class_names),
                                class_names, hflip)


# ---------------------------------------------------------------------------- CIFAR-10
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a CIFAR-10 batch needs to rebuild a uint8 ndarray.

    Dicts, lists, tuples, str, bytes, ints need no global; an ndarray needs numpy's
    ``_reconstruct``, ``ndarray`` and ``dtype`` (or ``_frombuffer`` at protocol 5), and a
    Python-3 pickle of bytes at protocol 2 needs ``_codecs.encode`` (served by a latin-1-only
    stand-in). Any other global (``os.system``, ``builtins.eval``, ...) is refused
    *before* it is called, so a malicious file cannot run code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return np.ndarray.__reduce__(np.zeros(0, np.uint8))[0]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) in {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}:
            return _frombuffer  # protocol-5 pickles of arrays
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")


def _frombuffer(buffer, dtype, shape, order="C") -> np.ndarray:
    """numpy's protocol-5 array rebuild, limited to plain bytes and a dtype."""
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("arrays must be rebuilt from bytes and a dtype")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin1 text may be encoded")
    return text.encode("latin1")


def safe_unpickle(path: str | os.PathLike):
    """Load a pickle with :class:`_RestrictedUnpickler` (``encoding='bytes'`` as for Python-2 pickles)."""
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"file not found: {path}")
    try:
        with open(path, "rb") as handle:
            return _RestrictedUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, MemoryError, OverflowError, UnicodeError, RecursionError) as err:
        raise DiffkitError(f"refusing to load {path}: {type(err).__name__}: {err}") from None


def _get(mapping: dict, key: str):
    return mapping.get(key.encode(), mapping.get(key))


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: ``{b'data': uint8 (N, 3072), b'labels': [N ints]}`` -> (N,3,32,32), (N,)."""
    batch = safe_unpickle(path)
    data = _get(batch, "data") if isinstance(batch, dict) else None
    labels = _get(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DiffkitError(f"{path} is not a CIFAR-10 batch: need 'data' as a uint8 array (N, 3072)")
    if not isinstance(labels, (list, tuple)) or len(labels) != data.shape[0] or not all(
            isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DiffkitError(f"{path} is not a CIFAR-10 batch: need {data.shape[0]} 'labels' in 0..9")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def load_cifar10_dataset(directory: str | os.PathLike, train: bool = True, img_size: int | None = None,
                         hflip: bool = False, resize: str = "auto") -> InMemoryImageDataset:
    """CIFAR-10 from ``directory`` or ``directory/cifar-10-batches-py``: 50000 train / 10000 test."""
    directory = Path(directory)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    if not directory.is_dir():
        raise DiffkitError(f"data directory not found: {directory}")
    names = CIFAR10_TRAIN_BATCHES if train else ("test_batch",)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DiffkitError(f"missing CIFAR-10 batch {directory / missing[0]}; download it with "
                           f"diffkit.data.download_cifar10")
    parts = [read_cifar10_batch(directory / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if img_size is not None:
        images = resize_images(images, img_size, "bicubic" if resize == "auto" else resize)
    return InMemoryImageDataset(images, labels, 10, CIFAR10_NAMES, hflip)


# ---------------------------------------------------------------------------- image folder
def _center_square(image, size: int):
    """Resize the short side to ``size`` (bicubic) and crop the centre square (as ADM's loader)."""
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def folder_classes(directory: str | os.PathLike) -> list[tuple[str, list[Path]]]:
    """The classes of an image folder from its directory listing alone (no image is read): a
    (name, image files) pair per sub-folder holding images, sorted by name, or the folder itself as
    one class when none does. :func:`load_folder_dataset` labels its images so (label k = entry k)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DiffkitError(f"image folder not found: {directory}")

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    class_dirs = sorted(p for p in directory.iterdir() if p.is_dir() and images_in(p))
    groups = [(p.name, images_in(p)) for p in class_dirs] or [(directory.name, images_in(directory))]
    if not groups[0][1]:
        raise DiffkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {directory} or its sub-folders")
    return groups


def load_folder_dataset(directory: str | os.PathLike, img_size: int | None = None, channels: int = 3,
                        hflip: bool = False) -> InMemoryImageDataset:
    """Every image under ``directory``; the class is the sub-folder name (sorted), Pillow decoding.

    Images lying directly in ``directory`` (no sub-folders) form one class; when sub-folders hold
    images, images directly in ``directory`` are ignored. Images are converted to ``RGB``
    (channels=3) or ``L`` (channels=1); 16-bit grey PNGs are scaled from [0, 65535]. Any image
    that is not ``img_size`` square is resized (short side, bicubic) and centre-cropped; without
    ``img_size`` all images must already share one square size.
    """
    from PIL import Image, UnidentifiedImageError

    from .images import image_pixels
    check_choice("channels", channels, (1, 3))
    groups = folder_classes(directory)
    arrays, labels = [], []
    for label, (_, files) in enumerate(groups):
        for file in files:
            try:
                mode = "RGB" if channels == 3 else "L"
                with Image.open(file) as image:  # 8-bit pixels (16-bit grey scaled, not clipped as convert does)
                    image = Image.fromarray(np.rint(image_pixels(image, mode)).clip(0, 255).astype(np.uint8), mode)
                    if img_size is not None and image.size != (img_size, img_size):
                        image = _center_square(image, img_size)
                    array = np.asarray(image, dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise DiffkitError(f"cannot read image {file}: {err}") from None
            if img_size is None and (array.shape[0] != array.shape[1]
                                     or (arrays and array.shape[:2] != arrays[0].shape[:2])):
                raise DiffkitError(f"image {file} is {array.shape[1]}x{array.shape[0]} but others differ or it is "
                                   f"not square; pass img_size to resize all images")
            arrays.append(array.reshape(array.shape[0], array.shape[1], channels))
            labels.append(label)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return InMemoryImageDataset(images, labels, len(groups), [name for name, _ in groups], hflip)


# ---------------------------------------------------------------------------- front door
def default_data_dir(name: str) -> Path:
    """``$DIFFKIT_DATA/<name>`` if that variable is set, else ``./data/<name>``."""
    return Path(os.environ.get("DIFFKIT_DATA", "data")) / name


def check_image_dataset(name: str, what: str, verb: str = "trains on") -> None:
    """One-line error when ``what`` (a command that trains on, or ``verb``, images) is given a time-series set."""
    from .timeseries import SERIES_DATASETS
    if name in SERIES_DATASETS:
        images = [d for d in DATASET_NAMES if d not in SERIES_DATASETS]
        raise DiffkitError(f"dataset={name!r} holds time series; {what} {verb} images: {', '.join(images)}")


def check_data_dir_applies(name: str, data_dir, readers=("mnist", "fashion-mnist", "cifar10", "folder")) -> None:
    """A user's ``data_dir`` with ``name='digits'`` is refused in one line, naming the data sets
    ``readers`` that read a folder (``--data-dir DIR`` without ``--dataset`` used to train on the
    bundled digits; such old checkpoints' stored data_dir is dropped on load, see
    :func:`diffkit.checkpoint.load_checkpoint`)."""
    if name == "digits" and data_dir is not None:
        raise DiffkitError(f"data_dir={str(data_dir)!r} does not apply to dataset='digits' (bundled with "
                           f"scikit-learn); to read that folder give dataset {', '.join(readers[:-1])} "
                           f"or {readers[-1]}")


def load_dataset(name: str = "digits", data_dir: str | os.PathLike | None = None, img_size: int | None = None,
                 train: bool = True, hflip: bool = False, channels: int | None = None,
                 resize: str = "auto", num_series: int | None = None, seq_length: int | None = None,
                 test_fraction: float = 0.0, drop_columns: str = "", label_column: str = ""):
    """Load a named data set (see the module docstring) as an :class:`InMemoryImageDataset`
    (a :class:`~diffkit.timeseries.SeriesDataset` for ``sines``).

    Args:
        name: one of ``DATASET_NAMES``.
        data_dir: folder with the files (not used by ``digits``); default :func:`default_data_dir`.
        img_size: output side length; ``None`` keeps the native size (digits: 16).
        train: the training split (``digits`` and ``folder`` have no split and ignore it).
        hflip: random horizontal flips (off by default: digits are not mirror-symmetric).
        channels: 1 or 3 to convert (gray <-> RGB); ``None`` keeps the set's own channels.
        resize: ``auto`` | ``pad`` | ``bilinear`` | ``bicubic`` | ``nearest`` (see :func:`resize_images`).
        num_series, seq_length: time-series sets only (default 10000 series of 24 steps).
        test_fraction, drop_columns, label_column: ``series`` only
            (:func:`diffkit.series_files.load_file_series`).
    """
    check_choice("dataset", name, DATASET_NAMES)
    if name != "series" and (test_fraction or drop_columns or label_column):
        raise DiffkitError(f"test_fraction / drop_columns / label_column apply to dataset='series'; dataset={name!r} "
                           f"is another set")
    from .timeseries import SERIES_DATASETS, load_series_dataset
    if name in SERIES_DATASETS:
        file = name == "series"
        own = ("a series file: data_dir, seq_length, test_fraction, drop_columns, label_column" if file else
               "generated time series: num_series, seq_length, channels")
        for key, value, unset in (("img_size", img_size, None), ("hflip", hflip, False), ("resize", resize, "auto"),
                                  ("num_series", num_series, None) if file else ("data_dir", data_dir, None)):
            if value != unset:
                raise DiffkitError(f"{key}={value!r} does not apply to dataset={name!r} ({own})")
        seq_length = seq_length or 24
        if not file:
            return load_series_dataset(name, num_series=num_series or 10000, seq_length=seq_length,
                                       channels=channels or DATASET_CHANNELS[name], train=train)
        if data_dir is None:
            raise DiffkitError("dataset='series' needs data_dir: a .csv file (header row) or a .npy file (T, F)")
        from .series_files import load_file_series
        return load_file_series(data_dir, seq_length=seq_length, test_fraction=test_fraction,
                                drop_columns=drop_columns, label_column=label_column, train=train, channels=channels)
    if num_series is not None or seq_length is not None:
        raise DiffkitError(f"num_series / seq_length apply to time-series data sets; dataset={name!r} holds images")
    check_choice("resize", resize, RESIZE_MODES)
    if img_size is not None:
        check_range("img_size", img_size, 1, 4096, integer=True)
    if channels is not None:
        check_choice("channels", channels, (1, 3))
    check_data_dir_applies(name, data_dir)
    directory = Path(data_dir) if data_dir is not None else default_data_dir(name)
    if name == "digits":
        dataset = load_digits_dataset(img_size or DATASET_IMG_SIZE["digits"], hflip, resize)
    elif name == "mnist":
        dataset = load_idx_dataset(directory, train, DIGIT_NAMES, img_size, hflip, resize)
    elif name == "fashion-mnist":
        dataset = load_idx_dataset(directory, train, FASHION_MNIST_NAMES, img_size, hflip, resize)
    elif name == "cifar10":
        dataset = load_cifar10_dataset(directory, train, img_size, hflip, resize)
    else:
        if resize != "auto":
            raise DiffkitError(f"resize={resize!r} applies to digits, mnist, fashion-mnist and cifar10; an image "
                               f"folder is resized by its short side and centre-cropped (resize='auto')")
        return load_folder_dataset(directory, img_size, channels or 3, hflip)
    if channels is not None and channels != dataset.channels:
        dataset.images = convert_channels(dataset.images, channels)
    return dataset


def _init_worker(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: a signal to the whole process group (Ctrl-C,
    systemd, Slurm, ``kill -TERM -PGID``) must reach only the main process, which checkpoints and
    then shuts its workers down (a worker killed by it would abort the run first). A worker whose
    parent is gone still exits (PyTorch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False, device=None) -> DataLoader:
    """A ``DataLoader`` whose order and flips depend only on ``seed`` (CPU generator).

    ``device``: where the batches go; for CUDA the batches come in pinned (page-locked) memory,
    so that ``.to(device, non_blocking=True)`` copies them while the GPU still computes.

    Shuffling uses ``torch.Generator().manual_seed(seed)``; an :class:`InMemoryImageDataset`'s
    flip coins are a function of ``seed`` and the item index, so two loaders with the same seed
    yield identical batches whatever their ``num_workers``. Workers ignore SIGINT / SIGTERM
    (the main process handles them).
    """
    check_range("batch_size", batch_size, 1, None, integer=True)
    check_range("num_workers", num_workers, 0, None, integer=True)
    check_range("seed", seed, 0, None, integer=True)
    generator = torch.Generator().manual_seed(seed % 2**63)
    if hasattr(dataset, "set_flip_seed"):
        dataset.set_flip_seed(seed + 1)
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, generator=generator, worker_init_fn=_init_worker,
                      persistent_workers=num_workers > 0, pin_memory=pin)


def data_scale(dataset, max_items: int = 10_000, iterations: int = 100) -> Optional[float]:
    """The data's largest scale: the square root of the largest eigenvalue of the covariance of
    its items (flattened, in the space the network sees: images in [-1, 1], latents as encoded).

    At most ``max_items`` items, evenly spaced over the data set; the eigenvalue by power iteration
    on X^T X / n (X the centred items, never the d x d matrix), from a fixed start, so the value
    is reproducible. :func:`diffkit.timesteps.grade_sigmas_for` turns it into the ``logsnr_graded``
    grid's sigma_hi; the trainer stores it in every checkpoint. ``None`` for data without spread
    (one item, or all items equal): such data has no scale, and the grid keeps its unit default."""
    n = len(dataset)
    check_range("len(dataset)", n, 1, None, integer=True)
    index = torch.linspace(0, n - 1, min(n, max_items)).round().long()
    if getattr(dataset, "is_latent", False):
        x = dataset.latents[index].double()
    elif isinstance(getattr(dataset, "images", None), torch.Tensor) and dataset.images.dtype == torch.uint8:
        x = dataset.images[index].double() / 127.5 - 1.0
    else:
        x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in index]).double()
    x = x.flatten(1)
    x = x - x.mean(0)
    v = torch.ones(x.shape[1], dtype=torch.float64) + torch.linspace(0, 1, x.shape[1], dtype=torch.float64)
    value = 0.0
    for _ in range(iterations):
        w = x.T @ (x @ v) / x.shape[0]
        norm = float(w.norm())
        if norm == 0.0:
            return None
        v, previous, value = w / norm, value, norm
        if abs(value - previous) <= 1e-10 * value:
            break
    return math.sqrt(value)


# ---------------------------------------------------------------------------- downloads
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # PyTorch's mirror of LeCun's files
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's own
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # Krizhevsky's page
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
# sha256 of the original gzip files (/work/shared/data/README.md).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}


def download_file(url: str, dest: str | os.PathLike, checksum: str, algorithm: str = "sha256") -> Path:
    """Fetch ``url`` to ``dest`` unless it is already there with the right checksum.

    The bytes go to a temporary file in the same folder, are hashed, and only a match is moved
    into place with ``os.replace`` (atomic), so an interrupted or corrupted download never
    leaves a file that looks complete.
    """
    check_choice("algorithm", algorithm, ("sha256", "md5"))
    dest = Path(dest)
    if dest.is_file() and hash_file(dest, hashlib.new(algorithm))[0].hexdigest() == checksum:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.new(algorithm)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != checksum:
            raise DiffkitError(f"download of {url} has {algorithm} {digest.hexdigest()}; expected {checksum}")
        os.replace(tmp_name, dest)
    except OSError as err:
        raise DiffkitError(f"cannot download {url} to {dest}: {err}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest


def download_mnist(root: str | os.PathLike = "data/mnist", base_url: str = MNIST_URL) -> Path:
    """Download the four MNIST IDX gzip files into ``root`` (sha256-checked). Returns ``root``."""
    for name, sha in MNIST_SHA256.items():
        download_file(base_url + name, Path(root) / name, sha)
    return Path(root)


def download_fashion_mnist(root: str | os.PathLike = "data/fashion-mnist", base_url: str = FASHION_MNIST_URL) -> Path:
    """Download the four Fashion-MNIST IDX gzip files into ``root`` (sha256-checked)."""
    for name, sha in FASHION_MNIST_SHA256.items():
        download_file(base_url + name, Path(root) / name, sha)
    return Path(root)


def download_cifar10(root: str | os.PathLike = "data/cifar10", url: str = CIFAR10_URL) -> Path:
    """Download and unpack CIFAR-10 (python version, md5-checked) into ``root/cifar-10-batches-py``."""
    root = Path(root)
    archive = download_file(url, root / "cifar-10-python.tar.gz", CIFAR10_MD5, "md5")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("cifar-10-batches-py/")]
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DiffkitError(f"cannot unpack {archive}: {err}") from None
    return root / "cifar-10-batches-py"


__all__ = [
    "DATASET_NAMES", "InMemoryImageDataset", "load_dataset", "make_loader", "data_scale", "resize_images",
    "convert_channels",
    "read_idx", "read_cifar10_batch", "safe_unpickle", "load_digits_dataset", "load_idx_dataset",
    "load_cifar10_dataset", "folder_classes", "load_folder_dataset", "download_file", "download_mnist",
    "download_fashion_mnist", "download_cifar10", "FASHION_MNIST_NAMES", "CIFAR10_NAMES", "DIGIT_NAMES",
]
