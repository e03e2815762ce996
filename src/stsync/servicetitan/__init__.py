"""ServiceTitan API v2: ``client`` (ServiceTitanClient), ``auth`` (token cache), ``models``,
``vocabulary`` (fixed enums).

Names are re-exported lazily: importing ``stsync.servicetitan.vocabulary`` (the config
schema does, at startup) must not import httpx or pydantic models.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServiceTitanClient": "stsync.servicetitan.client",
    "TokenProvider": "stsync.servicetitan.auth",
    "Booking": "stsync.servicetitan.models",
    "BookingProviderTag": "stsync.servicetitan.models",
    "Address": "stsync.servicetitan.models",
    "CustomField": "stsync.servicetitan.models",
    "Customer": "stsync.servicetitan.models",
    "CustomerContact": "stsync.servicetitan.models",
    "CustomFieldType": "stsync.servicetitan.models",
    "ExportPage": "stsync.servicetitan.models",
    "Job": "stsync.servicetitan.models",
    "JobHistory": "stsync.servicetitan.models",
    "JobHistoryEntry": "stsync.servicetitan.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stsync.servicetitan' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
