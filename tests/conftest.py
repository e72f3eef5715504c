"""Shared fixtures: real Fashion-MNIST (offline, from the Debian package) and small seeded subsets."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("LABSUPPORT_THREADS", str(os.cpu_count() or 1))


@pytest.fixture(scope="session")
def pyproject() -> dict:
    """pyproject.toml's [project] table."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="session")
def fmnist():
    import labsupport as ls

    return ls.load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def small(fmnist):
    """12k training / 2k test images, class-stratified and seeded."""
    return fmnist.subset(12_000, 2_000, seed=0)


@pytest.fixture()
def images():
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def labels():
    return torch.tensor([0, 1, 2, 9, 9, 3])
