"""The notebooks' data loader (notebooks/real_data.py), on tiny IDX files written here in the
format of Fashion-MNIST's, so that it is tested whether or not the real data is installed."""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "notebooks"))
import real_data  # noqa: E402


def _write_idx(path, array, compress=True):
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(directory, rng, train=7, test=5):
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, test),
    }
    for name, array in arrays.items():
        _write_idx(directory / name, array)
    return arrays


def test_read_idx_round_trips(tmp_path, rng):
    for shape in [(3,), (2, 4, 5), (0, 28, 28)]:
        array = rng.integers(0, 256, shape).astype(np.uint8)
        for compress in [True, False]:
            path = tmp_path / f"a{len(shape)}{'.gz' if compress else ''}"
            _write_idx(path, array, compress)
            np.testing.assert_array_equal(real_data.read_idx(path), array)


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "text").write_bytes(b"not an IDX file")
    with pytest.raises(ValueError, match="not an IDX file"):
        real_data.read_idx(tmp_path / "text")
    (tmp_path / "short").write_bytes(b"\0\0\x08\x01" + struct.pack(">i", 10) + b"abc")
    with pytest.raises(ValueError, match="holds 3 bytes"):
        real_data.read_idx(tmp_path / "short")


def test_loads_fashion_mnist_files(tmp_path, rng, capsys):
    arrays = _fake_fashion(tmp_path, rng)
    data = real_data.load(train_size=4, test_size=3, directory=tmp_path)
    assert data.name == "Fashion-MNIST"
    keep = np.random.default_rng(0).permutation(7)[:4]  # a random subset of the training set
    np.testing.assert_allclose(data.train_images, arrays["train-images-idx3-ubyte.gz"][keep] / 255)
    np.testing.assert_array_equal(data.train_labels, arrays["train-labels-idx1-ubyte.gz"][keep])
    np.testing.assert_allclose(data.test_images, arrays["t10k-images-idx3-ubyte.gz"][:3] / 255)
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte.gz"][:3])
    assert "data: Fashion-MNIST, 4 training and 3 test images" in capsys.readouterr().out
    everything = real_data.load(directory=tmp_path, verbose=False)
    assert len(everything.train_images) == 7 and len(everything.test_images) == 5


def test_falls_back_to_digits_and_says_how_to_get_the_real_data(tmp_path, capsys):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))  # incomplete
    data = real_data.load(train_size=100, test_size=50, directory=tmp_path)
    assert data.name == "scikit-learn 8x8 digits"
    assert data.train_images.shape == (100, 8, 8) and data.test_images.shape == (50, 8, 8)
    assert 0 <= data.train_images.min() and data.train_images.max() <= 1
    out = capsys.readouterr().out
    assert "scikit-learn 8x8 digits, 100 training and 50 test images" in out
    assert "apt-get install dataset-fashion-mnist" in out
    full = real_data.load(directory=tmp_path, verbose=False)
    assert len(full.train_images) == 1400 and len(full.test_images) == 1797 - 1400
