"""Datasets as in-memory tensors: Fashion-MNIST, MNIST, CIFAR-10, scikit-learn digits and diabetes.

Offline first. Each image dataset is looked up, in order, in

1. the course data folder (:func:`labsupport.paths.data_root`), laid out
   as torchvision expects (``<root>/FashionMNIST/raw/...``);
2. a system dataset package (Debian's ``dataset-fashion-mnist``), which is decompressed into 1.;
3. torchvision's download, only when ``download=True`` (``labsupport data prepare NAME --download``).

Files are verified (IDX header and size; SHA-256 of the content where it is known). A missing or
corrupt dataset raises :class:`DatasetNotFoundError` naming what was tried and the command that
fixes it; no other dataset is ever substituted.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._validate import check_choice, check_int
from .io import atomic_open, sha256_file
from .paths import data_root

IMAGE_DATASETS = ("fashion-mnist", "mnist", "cifar10", "digits")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
DIGIT_CLASSES = tuple(str(i) for i in range(10))

# SHA-256 of the decompressed IDX files (identical for the Zalando release and the Debian package).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
IDX_FILES = tuple(FASHION_MNIST_SHA256)
CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing or corrupt; the message says what was tried and how to fix it."""


@dataclass
class ImageData:
    """A labelled image dataset held in memory.

    Attributes:
        name: dataset name (``"fashion-mnist"``, ...).
        x_train, x_test: float32 tensors (N, C, H, W) with values in [0, 1].
        y_train, y_test: int64 tensors (N,) of class indices.
        classes: class names, index = label.
        source: where the files were read from.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> ImageData:
        """A class-stratified random subset (same class balance), for quick profiles and tests."""
        gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
        x_train, y_train = self.x_train, self.y_train
        x_test, y_test = self.x_test, self.y_test
        if n_train is not None:
            idx = _stratified(y_train, check_int("n_train", n_train, low=1, high=len(y_train)), gen)
            x_train, y_train = x_train[idx], y_train[idx]
        if n_test is not None:
            idx = _stratified(y_test, check_int("n_test", n_test, low=1, high=len(y_test)), gen)
            x_test, y_test = x_test[idx], y_test[idx]
        return ImageData(self.name, x_train, y_train, x_test, y_test, self.classes, self.source)

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)}, classes={len(self.classes)}, source={self.source!r})")


def _stratified(y: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(len(y), generator=gen)
    # Interleave classes: rank each row within its class, then take the n lowest ranks.
    y_perm = y[perm]
    order = torch.argsort(y_perm, stable=True)
    counts = torch.bincount(y_perm)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(y)) - starts[y_perm[order]]
    # Fractional rank keeps the class proportions of the full set.
    frac = rank.double() / counts[y_perm].double()
    keep = torch.argsort(frac, stable=True)[:n]
    return perm[keep].sort().values


# ---------------------------------------------------------------------------------------------
# IDX (MNIST family)
# ---------------------------------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an (uncompressed or ``.gz``) IDX file of unsigned bytes, checking its header and size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetNotFoundError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetNotFoundError(
            f"{path} is corrupt or truncated: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_family(name: str, folder: str, classes: tuple[str, ...], download: bool) -> ImageData:
    raw_dir = data_root() / folder / "raw"
    tried = [str(raw_dir)]
    if not all((raw_dir / f).exists() for f in IDX_FILES) and name == "fashion-mnist":
        tried.append(str(DEBIAN_FASHION_MNIST))
        if all((DEBIAN_FASHION_MNIST / f"{f}.gz").exists() for f in IDX_FILES):
            for f in IDX_FILES:
                with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz", "rb") as src, atomic_open(raw_dir / f) as dst:
                    shutil.copyfileobj(src, dst)
    if not all((raw_dir / f).exists() for f in IDX_FILES) and download:
        tried.append("torchvision download")
        _torchvision_download(name, raw_dir.parent.parent)
    missing = [f for f in IDX_FILES if not (raw_dir / f).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"{name}: files {missing} not found. Tried: {', '.join(tried)}. Fix: {fix_command(name)}")
    if name == "fashion-mnist":
        for f, digest in FASHION_MNIST_SHA256.items():
            if sha256_file(raw_dir / f) != digest:
                raise DatasetNotFoundError(
                    f"{raw_dir / f} is corrupt (SHA-256 mismatch). Delete it and run {fix_command(name)}")
    arrays = {f: read_idx(raw_dir / f) for f in IDX_FILES}
    x_train = _to_images(arrays["train-images-idx3-ubyte"])
    x_test = _to_images(arrays["t10k-images-idx3-ubyte"])
    y_train = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    y_test = torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetNotFoundError(f"{raw_dir}: image and label counts differ; run {fix_command(name)}")
    return ImageData(name, x_train, y_train, x_test, y_test, classes, source=str(raw_dir))


def _to_images(array: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(array.copy())
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x.float().div_(255.0)


def _torchvision_download(name: str, root: Path) -> None:
    try:
        from torchvision import datasets
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise DatasetNotFoundError(f"torchvision is needed to download {name}: pip install torchvision") from exc
    cls = {"fashion-mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]
    for train in (True, False):
        try:
            cls(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise DatasetNotFoundError(
                f"Could not download {name} into {root} ({exc}). Are you online? "
                f"Then run {fix_command(name)}") from exc


def fix_command(name: str) -> str:
    """The one command that makes dataset ``name`` available."""
    if name == "fashion-mnist":
        return ("`sudo apt-get install dataset-fashion-mnist` "
                "(or online: `labsupport data prepare fashion-mnist --download`)")
    return f"`labsupport data prepare {name} --download` (needs internet once)"


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (binary version: plain bytes, no pickle)
# ---------------------------------------------------------------------------------------------

CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


def _cifar10(download: bool) -> ImageData:
    folder = data_root() / "cifar-10-batches-bin"
    if not all((folder / f).exists() for f in CIFAR_FILES) and download:
        try:
            from torchvision.datasets.utils import download_url
            download_url(CIFAR10_BINARY_URL, str(data_root()), md5=CIFAR10_BINARY_MD5)
        except Exception as exc:
            raise DatasetNotFoundError(
                f"Could not download CIFAR-10 ({exc}). Are you online? Then run {fix_command('cifar10')}") from exc
        with tarfile.open(data_root() / "cifar-10-binary.tar.gz") as tar:
            tar.extractall(data_root(), filter="data")
    missing = [f for f in CIFAR_FILES if not (folder / f).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"cifar10: {missing} not found in {folder}. Fix: {fix_command('cifar10')}")
    parts = []
    for f in CIFAR_FILES:
        raw = np.fromfile(folder / f, dtype=np.uint8)
        if raw.size != 10000 * 3073:
            raise DatasetNotFoundError(f"{folder / f} is corrupt ({raw.size} bytes); run {fix_command('cifar10')}")
        parts.append(raw.reshape(10000, 3073))
    train, test = np.concatenate(parts[:5]), parts[5]

    def split(block: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.from_numpy(block[:, 0].astype(np.int64))
        x = torch.from_numpy(block[:, 1:].reshape(-1, 3, 32, 32).copy()).float().div_(255.0)
        return x, y

    (x_train, y_train), (x_test, y_test) = split(train), split(test)
    return ImageData("cifar10", x_train, y_train, x_test, y_test, CIFAR10_CLASSES, source=str(folder))


# ---------------------------------------------------------------------------------------------
# scikit-learn bundled sets
# ---------------------------------------------------------------------------------------------

def _digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.25, random_state=0,
                                              stratify=bunch.target)
    return ImageData("digits", torch.from_numpy(x_tr).unsqueeze(1), torch.from_numpy(y_tr).long(),
                     torch.from_numpy(x_te).unsqueeze(1), torch.from_numpy(y_te).long(), DIGIT_CLASSES,
                     source="scikit-learn (bundled)")


@dataclass
class TabularData:
    """A regression dataset: features scaled to [0, 1] and a response scaled to [0, 1]."""

    name: str
    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]


def load_diabetes() -> TabularData:
    """scikit-learn's diabetes set (442 patients, 10 features), min-max scaled to [0, 1] as in
    Jagielski et al. 2018 (features and response in [0, 1])."""
    from sklearn.datasets import load_diabetes as sk_load

    bunch = sk_load()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.float64)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    y = (y - y.min()) / (y.max() - y.min())
    return TabularData("diabetes", x, y, tuple(bunch.feature_names))


def load_randhie(*, log_response: bool = False) -> TabularData:
    """statsmodels' RAND Health Insurance Experiment (20,190 person-years, 9 features): predict the
    number of doctor visits (``mdvis``). Features and response are min-max scaled to [0, 1] as in
    Jagielski et al. 2018. Visits are heavy-tailed (0 to 77), so most scaled responses sit near 0
    and the clean MSE is small; ``log_response=True`` scales log(1 + visits) instead."""
    try:
        from statsmodels.datasets import randhie
    except ImportError as exc:
        raise DatasetNotFoundError("randhie: tried statsmodels.datasets.randhie (bundled with statsmodels), "
                                   "but statsmodels is not installed. Fix: pip install 'statsmodels>=0.14'") from exc
    frame = randhie.load_pandas().data
    y = frame["mdvis"].to_numpy(np.float64)
    if log_response:
        y = np.log1p(y)
    xf = frame.drop(columns="mdvis")
    x = xf.to_numpy(np.float64)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    y = (y - y.min()) / (y.max() - y.min())
    return TabularData("randhie" + (" (log visits)" if log_response else ""), x, y, tuple(xf.columns))


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------

def load_dataset(name: str, *, download: bool = False) -> ImageData:
    """Load an image dataset into memory.

    Args:
        name: one of ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``, ``"digits"``.
        download: allow a torchvision download when the files are not on disk.

    Returns:
        :class:`ImageData` with float images in [0, 1] and int64 labels.

    Raises:
        DatasetNotFoundError: the files are missing or corrupt (the message says how to fix it).
    """
    check_choice("name", name, IMAGE_DATASETS)
    if name == "fashion-mnist":
        return _mnist_family(name, "FashionMNIST", FASHION_MNIST_CLASSES, download)
    if name == "mnist":
        return _mnist_family(name, "MNIST", DIGIT_CLASSES, download)
    if name == "cifar10":
        return _cifar10(download)
    return _digits()


def dataset_status() -> dict[str, str]:
    """For each image dataset: where it was found, or why it is missing (used by ``doctor``)."""
    status = {}
    for name in IMAGE_DATASETS:
        try:
            status[name] = f"ok ({load_dataset(name).source})"
        except DatasetNotFoundError as exc:
            status[name] = f"missing: {exc}"
    return status
