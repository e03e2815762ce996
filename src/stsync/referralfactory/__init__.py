"""Referral Factory API v2: ``client`` (ReferralFactoryClient) and ``models``.

Nothing is re-exported: import from the module that defines a name.
"""
