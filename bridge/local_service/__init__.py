"""The built-in local fal service: fal's queue and storage protocol on 127.0.0.1 with a deterministic
stand-in for SAM Audio, so tests, demos and benchmarks run the real client over real HTTP.

    with LocalFalService(key="test") as svc:
        ...  # point the fal client at svc.url (queue and storage both)

The separation rule is in `separator`, the result/error mapping in `queue`, the faults in `faults`.
"""

from bridge.local_service.faults import FAULT_KINDS, Faults
from bridge.local_service.server import LocalFalService, serve

__all__ = ["FAULT_KINDS", "Faults", "LocalFalService", "serve"]
