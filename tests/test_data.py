import gzip

import numpy as np
import pytest
import torch

import labsupport as ls
from labsupport import data as D


def test_fashion_mnist_is_real_and_complete(fmnist):
    assert fmnist.x_train.shape == (60000, 1, 28, 28) and fmnist.x_test.shape == (10000, 1, 28, 28)
    assert fmnist.x_train.dtype == torch.float32
    assert 0 <= float(fmnist.x_train.min()) and float(fmnist.x_train.max()) <= 1
    assert torch.equal(torch.bincount(fmnist.y_train), torch.full((10,), 6000))
    assert fmnist.classes[9] == "Ankle boot"


def test_subset_is_stratified_and_seeded(fmnist):
    a = fmnist.subset(1000, 500, seed=3)
    b = fmnist.subset(1000, 500, seed=3)
    assert torch.equal(a.x_train, b.x_train)
    assert torch.equal(torch.bincount(a.y_train), torch.full((10,), 100))
    assert len(a.y_test) == 500
    with pytest.raises(ValueError, match="seed=-1 is out of range"):
        fmnist.subset(1000, 500, seed=-1)  # torch would accept it and wrap it silently


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_DATA", str(tmp_path / "data"))
    return tmp_path


def test_fresh_data_dir_materialises_from_debian_package(isolated):
    data = ls.load_dataset("fashion-mnist")
    raw = isolated / "data" / "FashionMNIST" / "raw"
    assert data.source == str(raw) and (raw / "train-images-idx3-ubyte").exists()


def test_corrupt_file_is_reported_with_fix(isolated):
    ls.load_dataset("fashion-mnist")
    path = isolated / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(D.DatasetNotFoundError, match="corrupt.*apt-get install dataset-fashion-mnist"):
        ls.load_dataset("fashion-mnist")


def test_missing_everywhere_names_what_was_tried(isolated, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", isolated / "nowhere")
    with pytest.raises(D.DatasetNotFoundError) as err:
        ls.load_dataset("fashion-mnist")
    msg = str(err.value)
    assert "Tried" in msg and "nowhere" in msg and "labsupport data prepare fashion-mnist --download" in msg


def test_mnist_missing_offline_says_how_to_fix(isolated):
    with pytest.raises(D.DatasetNotFoundError, match="labsupport data prepare mnist --download"):
        ls.load_dataset("mnist")


def test_cifar_missing_offline_says_how_to_fix(isolated):
    with pytest.raises(D.DatasetNotFoundError, match="labsupport data prepare cifar10 --download"):
        ls.load_dataset("cifar10")


def test_cifar_binary_reader(isolated):
    folder = isolated / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in D.CIFAR_FILES:
        block = rng.integers(0, 256, (10000, 3073), dtype=np.uint8)
        block[:, 0] %= 10
        block.tofile(folder / name)
    data = ls.load_dataset("cifar10")
    assert data.x_train.shape == (50000, 3, 32, 32) and data.num_classes == 10
    (folder / "test_batch.bin").write_bytes(b"short")
    with pytest.raises(D.DatasetNotFoundError, match="corrupt"):
        ls.load_dataset("cifar10")


def test_truncated_idx_is_detected(tmp_path):
    src = D.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(src, "rb") as f:
        raw = f.read()
    (tmp_path / "labels").write_bytes(raw[:-10])
    with pytest.raises(D.DatasetNotFoundError, match="truncated"):
        D.read_idx(tmp_path / "labels")
    assert D.read_idx(src).shape == (10000,)


def test_digits_and_diabetes_are_bundled():
    digits = ls.load_dataset("digits")
    assert digits.x_train.shape[1:] == (1, 8, 8) and len(digits.y_train) + len(digits.y_test) == 1797
    diab = ls.load_diabetes()
    assert diab.x.shape == (442, 10) and diab.x.min() == 0 and diab.x.max() == 1 and diab.y.max() == 1
