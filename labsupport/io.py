"""Files: atomic writes, SHA-256 checksums and model weights in safetensors.

Every file labsupport writes goes to a temporary file in the same folder first and is then renamed
over the target with ``os.replace`` (atomic on POSIX), so a killed process never leaves a half
written cache entry behind. Weights are stored as safetensors: loading them cannot execute code,
unlike ``pickle``/``torch.load``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load_file, save_file


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it to ``path`` on success.

    On any exception (or if the process dies) the target is untouched and the temporary file is
    removed (or, after a hard kill, left as an ignorable ``.tmp-*`` file, never as ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, Any] | None = None) -> Path:
    """Save a dict of tensors as safetensors, atomically; ``metadata`` is stored as JSON strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    os.close(fd)
    try:
        meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle)."""
    return load_file(str(path))


def save_model(path: str | os.PathLike, model: torch.nn.Module,
               metadata: dict[str, Any] | None = None) -> Path:
    """Save a model's ``state_dict`` as safetensors, atomically."""
    return save_weights(path, model.state_dict(), metadata)


def load_model(path: str | os.PathLike, model: torch.nn.Module) -> torch.nn.Module:
    """Load safetensors weights into ``model`` (strict) and return it."""
    state = load_weights(path)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return model
