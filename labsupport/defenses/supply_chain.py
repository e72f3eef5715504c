"""Supply-chain hygiene for models and data: why loading an untrusted pickle runs code, what
refuses it, and SHA-256 manifests verified before anything is loaded.

* :func:`write_pickle_exploit` writes a *harmless* malicious model file: a real state dict plus one
  object whose unpickling calls ``pathlib.Path.touch`` on a marker path. Loading it with
  ``pickle.load`` or ``torch.load(weights_only=False)`` creates the marker: code ran.
* :func:`pickle_globals` lists, without executing anything, every callable a pickle (or a
  ``torch.save`` zip) would import; :func:`scan_pickle` judges them against an **allow-list**.
  Static scanners are a partial answer: they see only what they can parse, and a block-list
  misses any dangerous callable it does not name, so allow-lists (``torch.load(weights_only=True)``
  is one) and formats without code paths (safetensors) are the real fix.
* :func:`write_manifest` / :func:`verify_manifest` record and check SHA-256 digests of data and
  weight files; :func:`load_verified` loads safetensors weights only after the check passed.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import pickletools
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import IntegrityError, atomic_write_bytes, load_weights, sha256_file

# What torch.load(weights_only=True) needs for plain tensors and state dicts: the allow-list idea.
SAFE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"), ("torch", "DoubleStorage"), ("torch", "HalfStorage"),
    ("torch", "LongStorage"), ("torch", "IntStorage"), ("torch", "ByteStorage"),
    ("torch", "BoolStorage"), ("torch", "BFloat16Storage"),
    ("torch.storage", "_load_from_bytes"),
    ("torch", "float32"), ("torch", "int64"),
})


class _TouchMarker:
    """Unpickles into a call of ``pathlib.Path.touch(marker)``: visible, harmless proof of code
    execution. (A real attacker would call ``os.system`` here.)"""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def write_pickle_exploit(path: str | os.PathLike, marker: str | os.PathLike,
                         state: Mapping[str, torch.Tensor] | None = None, *, torch_format: bool = True) -> Path:
    """Write a model file that creates ``marker`` when it is unpickled.

    Args:
        path: the file to write.
        marker: the file that loading ``path`` will create (use a temporary folder).
        state: real weights to ship alongside (a model's ``state_dict``); empty by default.
        torch_format: write with ``torch.save`` (a zip holding ``data.pkl``, like ``.pt``/``.bin``
            files); ``False`` writes a bare pickle.
    """
    payload = {"state_dict": dict(state or {}), "metadata": _TouchMarker(Path(marker))}
    path = Path(path)
    buf = io.BytesIO()
    if torch_format:
        torch.save(payload, buf)
    else:
        pickle.dump(payload, buf, protocol=4)
    return atomic_write_bytes(path, buf.getvalue())


def _pickle_bytes(path: str | os.PathLike) -> bytes:
    """The pickle stream of a bare pickle or of a ``torch.save`` zip (its ``*/data.pkl``)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                raise ValueError(f"{path} is a zip file without a data.pkl; not a torch.save file")
            return zf.read(names[0])
    return path.read_bytes()


def pickle_globals(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Every ``(module, name)`` the unpickler would import from ``path``, in order, found by
    reading the opcodes (``pickletools.genops``) without executing anything."""
    data = _pickle_bytes(path)
    found: list[tuple[str, str]] = []
    strings: list[str] = []
    memo: dict[int, object] = {}
    last: object = None
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                       "BINSTRING", "STRING"):
            last = arg
            strings.append(arg)
        elif op.name in ("MEMOIZE",):
            memo[len(memo)] = last
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = last
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(int(arg))
            if isinstance(last, str):
                strings.append(last)
        elif op.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            found.append((module, name))
            last = None
        elif op.name == "STACK_GLOBAL":
            if len(strings) < 2:
                found.append(("?", "?"))  # could not resolve: treat as unsafe
            else:
                found.append((strings[-2], strings[-1]))
            last = None
        else:
            last = None
    return found


@dataclass
class ScanReport:
    """The result of :func:`scan_pickle`: what would be imported and what the allow-list rejects."""

    path: Path
    imports: list[tuple[str, str]]
    rejected: list[tuple[str, str]]

    @property
    def safe(self) -> bool:
        return not self.rejected

    def __str__(self) -> str:
        verdict = "no code beyond tensor rebuilding" if self.safe else \
            "REJECTED: " + ", ".join(f"{m}.{n}" for m, n in self.rejected)
        return f"{self.path.name}: {len(self.imports)} imports; {verdict}"


def scan_pickle(path: str | os.PathLike, allow: Iterable[tuple[str, str]] = SAFE_GLOBALS) -> ScanReport:
    """Static allow-list scan of a pickle / ``torch.save`` file: every imported callable not in
    ``allow`` is rejected. It reads opcodes only (never unpickles)."""
    allow = set(allow)
    imports = pickle_globals(path)
    return ScanReport(Path(path), imports, [g for g in dict.fromkeys(imports) if g not in allow])


@dataclass
class ThirdPartyScan:
    """What a block-list scanner (picklescan) said about a file: the callables it judged
    dangerous, those it only called suspicious, and its verdict."""

    tool: str
    dangerous: list[str]
    suspicious: list[str]
    infected: bool

    def __str__(self) -> str:
        verdict = "INFECTED" if self.infected else "no issue reported"
        return (f"{self.tool}: {verdict}; dangerous: {', '.join(self.dangerous) or '-'}; "
                f"suspicious: {', '.join(self.suspicious) or '-'}")


def third_party_scan(path: str | os.PathLike) -> ThirdPartyScan:
    """Scan ``path`` with picklescan (the scanner Hugging Face runs on uploads). It looks callables
    up in its own lists: names it knows as dangerous make the file infected, unknown ones are only
    "suspicious", which is why an allow-list (:func:`scan_pickle`) is the safer rule."""
    try:
        from importlib.metadata import version

        from picklescan.scanner import SafetyLevel, scan_file_path
    except ImportError as exc:
        raise ImportError("picklescan is not installed; run: pip install -e '.[lab4]' "
                          "(or: pip install picklescan)") from exc
    res = scan_file_path(str(path))
    names = {level: [f"{g.module}.{g.name}" for g in res.globals if g.safety == level]
             for level in (SafetyLevel.Dangerous, SafetyLevel.Suspicious)}
    return ThirdPartyScan(f"picklescan {version('picklescan')}", names[SafetyLevel.Dangerous],
                          names[SafetyLevel.Suspicious], res.infected_files > 0)


# ---------------------------------------------------------------------------------------------
# SHA-256 manifests
# ---------------------------------------------------------------------------------------------

MANIFEST_VERSION = 1


def write_manifest(files: Iterable[str | os.PathLike], manifest: str | os.PathLike, *,
                   root: str | os.PathLike | None = None) -> Path:
    """Record the SHA-256 of each file (paths relative to ``root``, default the manifest's folder)
    in a JSON manifest, written atomically."""
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    entries = {}
    for f in files:
        p = Path(f)
        full = p if p.is_absolute() else root / p
        if not full.is_file():
            raise FileNotFoundError(f"files: {full} does not exist; a manifest can only list existing files")
        entries[str(full.resolve().relative_to(root.resolve()))] = sha256_file(full)
    if not entries:
        raise ValueError("files is empty; a manifest needs at least one file")
    body = json.dumps({"version": MANIFEST_VERSION, "sha256": dict(sorted(entries.items()))}, indent=2)
    return atomic_write_bytes(manifest, (body + "\n").encode())


def read_manifest(manifest: str | os.PathLike) -> dict[str, str]:
    """The ``{relative path: sha256}`` entries of a manifest (clear errors for a bad file)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    try:
        doc = json.loads(manifest.read_text())
        entries = doc["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"manifest {manifest} is not a labsupport manifest ({exc})") from exc
    if doc.get("version") != MANIFEST_VERSION or not isinstance(entries, dict):
        raise ValueError(f"manifest {manifest}: unsupported version {doc.get('version')!r}")
    return entries


def verify_manifest(manifest: str | os.PathLike, *, root: str | os.PathLike | None = None,
                    only: Iterable[str] | None = None) -> list[Path]:
    """Check every file of the manifest (or the relative paths in ``only``) against its SHA-256.

    Returns the verified paths. Raises :class:`FileNotFoundError` naming a listed file that is
    missing and :class:`IntegrityError` naming a file whose digest differs.
    """
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    entries = read_manifest(manifest)
    names = list(entries) if only is None else list(only)
    verified = []
    for name in names:
        if name not in entries:
            raise ValueError(f"only: {name!r} is not listed in {manifest}; listed: {sorted(entries)}")
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{name} is listed in {manifest} but missing under {root}")
        actual = sha256_file(path)
        if actual != entries[name]:
            raise IntegrityError(f"{path}: SHA-256 {actual} does not match the manifest's "
                                 f"{entries[name]}; the file changed - refusing it")
        verified.append(path)
    return verified


def load_verified(path: str | os.PathLike, manifest: str | os.PathLike, *,
                  root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Load safetensors weights only after ``path`` matched its manifest entry."""
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    name = str(Path(path).resolve().relative_to(root.resolve()))
    entries = read_manifest(manifest)
    if name not in entries:
        raise ValueError(f"path: {name!r} is not listed in {manifest}; listed: {sorted(entries)}")
    if not (root / name).is_file():
        raise FileNotFoundError(f"{name} is listed in {manifest} but missing under {root}")
    # the digest is checked on the very bytes that are then parsed: no gap to swap the file in
    return load_weights(root / name, sha256=entries[name])
