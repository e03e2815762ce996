"""Fixtures of the sandbox contract tests: ``st`` and ``rf``, raw clients of a running sandbox."""

from __future__ import annotations

import pytest
from contract import ReferralFactoryApi, ServiceTitanApi


@pytest.fixture
def st(sandbox):
    api = ServiceTitanApi(sandbox)
    yield api
    api.close()


@pytest.fixture
def rf(sandbox):
    api = ReferralFactoryApi(sandbox)
    yield api
    api.close()
