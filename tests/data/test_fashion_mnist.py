"""Fashion-MNIST IDX reading: round trip, the real files' layout, and clear errors for broken files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from sfmamba.data import DEFAULT_FASHION_MNIST_DIR, DatasetError, FashionMNIST, load_fashion_mnist, read_idx, write_idx


def write_split(root, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    stem = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(root / f"{stem}-images-idx3-ubyte{suffix}", images)
    write_idx(root / f"{stem}-labels-idx1-ubyte{suffix}", labels)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_idx_round_trip(tmp_path, gz):
    array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (5, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_documented_layout(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 1, 9], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9])


def test_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DatasetError, match=r"bad-idx: not an IDX file .*89504e47"):
        read_idx(path)


def test_truncated_file_reports_sizes(tmp_path):
    path = tmp_path / "short"
    write_idx(path, np.zeros((4, 2, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DatasetError, match=r"short: IDX header announces shape \(4, 2, 2\) \(32 bytes in all\) but "
                       r"the file has 29 bytes \(truncated\)"):  # fmt: skip
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))[:-12])
    with pytest.raises(DatasetError, match=r"cut.gz: cannot be read as gzip"):
        read_idx(path)


def test_missing_dir_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: no such directory \(expected the Fashion-MNIST IDX files"):
        load_fashion_mnist(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=r"no train-images-idx3-ubyte or train-images-idx3-ubyte.gz .*apt-get"):
        load_fashion_mnist(tmp_path, "train")


def test_label_count_and_range_checked(tmp_path):
    write_split(tmp_path, "train", np.zeros((3, 4, 4), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz: expected 3 labels, got shape \(2,\)"):
        load_fashion_mnist(tmp_path, "train")
    write_split(tmp_path, "test", np.zeros((2, 4, 4), np.uint8), np.array([0, 10], np.uint8), gz=False)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: label 10 out of range"):
        load_fashion_mnist(tmp_path, "test")


def test_dataset_gives_rgb_images_of_the_grey_values(tmp_path):
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    write_split(tmp_path, "train", images, np.array([3, 5], np.uint8))
    ds = FashionMNIST(tmp_path, "train")
    image, label = ds[1]
    assert len(ds) == 2 and label == 5 and image.mode == "RGB" and image.size == (4, 4)
    rgb = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], images[1])


@pytest.mark.skipif(not (DEFAULT_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="the Debian package dataset-fashion-mnist is not installed")  # fmt: skip
def test_debian_package_files():
    images, labels = load_fashion_mnist(DEFAULT_FASHION_MNIST_DIR, "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
