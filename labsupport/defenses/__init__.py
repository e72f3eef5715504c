"""Defenses (Lab 4), one module per defense: ``supply_chain`` (pickle exploits, allow-list scans,
SHA-256 manifests), ``aggregation`` (robust federated aggregation rules)."""

from . import aggregation

from .supply_chain import (
                           SAFE_GLOBALS,
                           ScanReport,
                           load_verified,
                           pickle_globals,
                           read_manifest,
                           scan_pickle,
                           verify_manifest,
                           write_manifest,
                           write_pickle_exploit,
)

__all__ = ["SAFE_GLOBALS", "aggregation", "ScanReport", "load_verified", "pickle_globals", "read_manifest", "scan_pickle",
           "verify_manifest", "write_manifest", "write_pickle_exploit"]
