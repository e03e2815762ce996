"""One way to get a Connection in a service test: the real ``stsync.connection.Connection``,
given whatever the test replaces.

``make_connection(config=None, **pieces)`` builds it on the test's own (isolated) paths, with
the endpoints below and the unit secrets in the environment, so clients it builds itself talk
to pytest-httpx mocks of ``AUTH``/``API``/``RF``. ``pieces`` go to the constructor unchanged:
``servicetitan=``/``referral_factory=`` (a fake client), ``ledger=``, ``transport=``. What the
connection built is closed after the test.

Registered from ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stsync import credentials
from stsync.connection import Connection
from stsync.storage.config import Config, Endpoints, default_config
from stsync.storage.paths import ConnectionPaths

AUTH = "https://auth.example.test"
API = "https://api.example.test"
RF = "https://rf.example.test/api/v2"
ENDPOINTS = Endpoints(AUTH, API, RF)
TENANT = 1234567
CLIENT_ID = "cid.unit"
BOOKING_PROVIDER = 42
CAMPAIGN = 7
SECRETS = {
    credentials.ST_CLIENT_SECRET.name: "cs2.unit-secret-value",
    credentials.ST_APP_KEY.name: "ak1.unit-app-key",
    credentials.RF_API_KEY.name: "rf-unit-api-key",
}


def unit_config() -> Config:
    """A connected config: tenant, client, booking provider and campaign set; the default mapping."""
    return default_config(tenant_id=TENANT, client_id=CLIENT_ID, booking_provider=BOOKING_PROVIDER, campaign_id=CAMPAIGN)


@pytest.fixture
def make_connection(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Connection]]:
    made: list[Connection] = []

    def make(config: Config | None = None, **pieces: Any) -> Connection:
        for secret in credentials.SECRETS:
            monkeypatch.setenv(secret.env_var.name, SECRETS[secret.name])
        pieces.setdefault("endpoints", ENDPOINTS)
        connection = Connection(ConnectionPaths.for_config(isolated / "config.toml"), config or unit_config(), **pieces)
        made.append(connection)
        return connection

    yield make
    for connection in made:
        connection.close()
