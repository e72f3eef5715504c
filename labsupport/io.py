"""Files: atomic writes, SHA-256 checksums and model weights in safetensors.

Every file labsupport writes goes to a temporary file in the same folder first and is then renamed
over the target with ``os.replace`` (atomic on POSIX), so a killed process never leaves a half
written cache entry behind. Weights are stored as safetensors: loading them cannot execute code,
unlike ``pickle``/``torch.load``. Each weights file carries the SHA-256 of its tensors in its
header (``content_sha256``), checked on every load, so a flipped byte is caught; a SHA-256 of the
whole file (from a manifest) can be required on top. Text caches (the Lab 3 tokenizer) are JSON
with the SHA-256 of their content beside it (:func:`write_verified_text`), checked the same way.
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
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

CONTENT_KEY = "content_sha256"


class IntegrityError(ValueError):
    """A file's content does not match its recorded SHA-256 (corrupt or tampered)."""


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


def write_verified_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically as JSON together with its SHA-256 (read it with
    :func:`read_verified_text`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    doc = {CONTENT_KEY: hashlib.sha256(text.encode()).hexdigest(), "content": text}
    return atomic_write_bytes(path, json.dumps(doc).encode())


def read_verified_text(path: str | os.PathLike) -> str:
    """The text :func:`write_verified_text` wrote, after checking it against its SHA-256.

    Raises:
        IntegrityError: the file is unreadable, not such a file, or its text does not match.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_bytes())
        text, recorded = doc["content"], doc[CONTENT_KEY]
        if not isinstance(text, str):
            raise TypeError(f"content is a {type(text).__name__}")
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise IntegrityError(f"{path}: not a verified text file ({type(exc).__name__}: {exc})") from exc
    if hashlib.sha256(text.encode()).hexdigest() != recorded:
        raise IntegrityError(f"{path}: content does not match its recorded SHA-256 (corrupt or tampered)")
    return text


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def update_digest(digest: Any, t: torch.Tensor, header: str) -> None:
    """Feed ``header`` and the raw bytes of ``t`` (hashed in place, no copy on CPU) to ``digest``."""
    t = t.detach().contiguous().cpu()
    digest.update(header.encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy())


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a dict of tensors (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        update_digest(digest, t, f"{name}|{t.dtype}|{tuple(t.shape)}|")
    return digest.hexdigest()


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, Any] | None = None) -> Path:
    """Save a dict of tensors as safetensors, atomically; ``metadata`` is stored as JSON strings,
    plus the tensors' SHA-256 under ``content_sha256``."""
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise TypeError("tensors must be a dict of name -> torch.Tensor (e.g. model.state_dict())")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    os.close(fd)
    try:
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
        meta[CONTENT_KEY] = tensors_sha256(cpu)
        save_file(cpu, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_weights(path: str | os.PathLike, *, sha256: str | None = None,
                 require_digest: bool = False) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle) and verify it.

    Args:
        path: the file.
        sha256: if given, the SHA-256 of the whole file must equal it (a manifest's entry).
        require_digest: refuse a file without the ``content_sha256`` header entry.

    Raises:
        IntegrityError: the file or its tensors do not match their SHA-256 (corrupt or tampered).
    """
    path = Path(path)
    data = path.read_bytes()  # read once: the bytes checked are the bytes loaded
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise IntegrityError(f"{path}: SHA-256 is {actual}, expected {sha256.lower()}; "
                                 "the file is corrupt or was changed - refusing to load it")
    try:
        header_len = int.from_bytes(data[:8], "little")
        recorded = json.loads(data[8:8 + header_len]).get("__metadata__", {}).get(CONTENT_KEY)
        tensors = load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise IntegrityError(f"{path}: not a readable safetensors file ({exc})") from exc
    if recorded is None:
        if require_digest:
            raise IntegrityError(f"{path}: no {CONTENT_KEY} recorded; cannot verify it")
    elif tensors_sha256(tensors) != recorded:
        raise IntegrityError(f"{path}: tensor data does not match its recorded SHA-256 "
                             "(corrupt or tampered) - refusing to load it")
    return tensors


def save_model(path: str | os.PathLike, model: torch.nn.Module,
               metadata: dict[str, Any] | None = None) -> Path:
    """Save a model's ``state_dict`` as safetensors, atomically, with its content SHA-256."""
    return save_weights(path, model.state_dict(), metadata)


def load_model(path: str | os.PathLike, model: torch.nn.Module, *, sha256: str | None = None,
               require_digest: bool = False) -> torch.nn.Module:
    """Load verified safetensors weights into ``model`` (strict) and return it.

    ``sha256``: the expected SHA-256 of the file (e.g. from a manifest); a mismatch is refused with
    :class:`IntegrityError`, as is tensor data that does not match the digest in its header (which
    ``require_digest`` makes mandatory).
    """
    state = load_weights(path, sha256=sha256, require_digest=require_digest)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return model
