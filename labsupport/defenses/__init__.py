"""Defenses (Lab 4), one module per defense: ``supply_chain`` (pickle exploits, allow-list scans,
SHA-256 manifests), ``aggregation`` (robust federated aggregation rules), ``federated`` (a
batched federated-learning simulation with poisoned clients), ``flower`` (the same rules as
Flower strategies), ``sanitization`` (sphere/slab filters and the certified bound)."""



from . import aggregation, federated, sanitization
from .supply_chain import (
                           SAFE_GLOBALS,
                           ThirdPartyScan,
                           ScanReport,
                           load_verified,
                           pickle_globals,
                           read_manifest,
                           scan_pickle,
                           third_party_scan,
                           verify_manifest,
                           write_manifest,
                           write_pickle_exploit,
)

__all__ = ["SAFE_GLOBALS", "ThirdPartyScan", "aggregation", "federated", "sanitization", "third_party_scan", "ScanReport", "load_verified", "pickle_globals", "read_manifest", "scan_pickle",
           "verify_manifest", "write_manifest", "write_pickle_exploit"]
