"""Defenses (Lab 4), one module per defense: ``supply_chain`` (pickle exploits, allow-list scans,
SHA-256 manifests), ``aggregation`` (robust federated aggregation rules), ``federated`` (a
batched federated-learning simulation with poisoned clients), ``flower`` (the same rules as
Flower strategies), ``sanitization`` (sphere/slab filters and the certified bound).

Part 1, detection and removal (each returns a ``common.Detection`` or a repaired model):
``probe`` (activation probe), ``clustering`` (activation clustering), ``spectral`` (spectral
signatures), ``strip`` (STRIP), ``neural_cleanse`` (batched Neural Cleanse and unlearning),
``pruning`` (fine-pruning), ``matrix`` (every defense against every attack)."""

from . import (
    aggregation,
    clustering,
    common,
    federated,
    matrix,
    neural_cleanse,
    probe,
    pruning,
    sanitization,
    spectral,
    strip,
)
from .supply_chain import (
    SAFE_GLOBALS,
    ScanReport,
    ThirdPartyScan,
    load_verified,
    pickle_globals,
    read_manifest,
    scan_pickle,
    third_party_scan,
    verify_manifest,
    write_manifest,
    write_pickle_exploit,
)

__all__ = ["SAFE_GLOBALS", "ThirdPartyScan", "aggregation", "clustering", "common", "federated", "matrix",
           "neural_cleanse", "probe", "pruning", "spectral", "strip", "sanitization", "third_party_scan",
           "ScanReport", "load_verified", "pickle_globals", "read_manifest", "scan_pickle",
           "verify_manifest", "write_manifest", "write_pickle_exploit"]
