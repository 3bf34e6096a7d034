"""The images of the notebooks and the demo: Fashion-MNIST when Debian's
``dataset-fashion-mnist`` package is installed, scikit-learn's bundled 8x8 digits otherwise.

    sudo apt-get install dataset-fashion-mnist   # Debian and Ubuntu: the real data

The package puts the four IDX files of Xiao, Rasul & Vollgraf (Fashion-MNIST, 2017,
https://arxiv.org/abs/1708.07747) in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = "for Fashion-MNIST, run `sudo apt-get install dataset-fashion-mnist` (Debian, Ubuntu)"
DIGITS_TRAIN = 1400  # of scikit-learn's 1,797 digits; the rest are held out


class Images(NamedTuple):
    """Images in [0, 1] of shape (n, side, side), labels in 0..9."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (gzipped or not): two zero bytes, a type byte (8: unsigned bytes), the
    number of dimensions, each dimension as a big-endian int32, then the data in C order."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(shape):
        raise ValueError(f"{path} holds {data.size} bytes for an array of shape {shape}")
    return data.reshape(shape)


def load(
    train_size: int | None = None,
    test_size: int | None = None,
    directory: Path = FASHION_MNIST,
    digits_train: int = DIGITS_TRAIN,
    verbose: bool = True,
) -> Images:
    """Fashion-MNIST from ``directory`` (a random ``train_size`` of its 60,000 training
    images, the first ``test_size`` of its 10,000 test images; ``None``: all), or, when its
    files are missing, scikit-learn's digits shuffled (the first ``digits_train`` for
    training, capped at ``train_size``; the rest, capped at ``test_size``, held out). Says
    which it used, and how to get the real data."""
    names = [
        f"{s}-{kind}-ubyte.gz" for s in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
    ]
    if all((Path(directory) / name).exists() for name in names):
        train_x, train_y, test_x, test_y = (read_idx(Path(directory) / name) for name in names)
        keep = np.random.default_rng(0).permutation(len(train_x))[:train_size]
        data = Images(
            "Fashion-MNIST",
            train_x[keep] / 255,
            train_y[keep],
            test_x[:test_size] / 255,
            test_y[:test_size],
        )
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(0).permutation(len(digits.images))
        images, labels = digits.images[order] / 16, digits.target[order]
        train = slice(0, min(digits_train, train_size or digits_train))
        rest = len(images) - digits_train
        test = slice(digits_train, digits_train + min(rest, test_size or rest))
        data = Images(
            "scikit-learn 8x8 digits",
            images[train],
            labels[train],
            images[test],
            labels[test],
        )
    if verbose:
        print(
            f"data: {data.name}, {len(data.train_images)} training and "
            f"{len(data.test_images)} test images"
        )
        if data.name != "Fashion-MNIST":
            print(f"  ({directory} not found; {HOW_TO_GET})")
    return data
