"""Referral Factory API v2: ``client`` (ReferralFactoryClient) and ``models``.

Names are re-exported lazily so that importing the package stays cheap at startup.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReferralFactoryClient": "stsync.referralfactory.client",
    "Campaign": "stsync.referralfactory.models",
    "CampaignField": "stsync.referralfactory.models",
    "CampaignFields": "stsync.referralfactory.models",
    "MetaField": "stsync.referralfactory.models",
    "User": "stsync.referralfactory.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stsync.referralfactory' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
