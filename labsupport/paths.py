"""Where the course keeps data and trained models.

``$LABSUPPORT_HOME`` (default ``~/.cache/poisoning-labs``) holds ``data/`` and ``models/``;
``$LABSUPPORT_DATA`` and ``$LABSUPPORT_MODELS`` override each folder on its own.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("LABSUPPORT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "poisoning-labs"


def data_root() -> Path:
    """The course data folder (torchvision layout: ``<root>/FashionMNIST/raw/...``)."""
    env = os.environ.get("LABSUPPORT_DATA")
    return Path(env).expanduser() if env else home() / "data"


def model_cache() -> Path:
    """The trained-model cache (safetensors files keyed by training config)."""
    env = os.environ.get("LABSUPPORT_MODELS")
    return Path(env).expanduser() if env else home() / "models"
