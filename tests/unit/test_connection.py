"""stsync.connection: pieces are built lazily, the constructor's pieces are used as given, and
close() closes what the connection built — never what it was given."""

from __future__ import annotations

import httpx
import pytest
from connection_fixtures import CAMPAIGN, RF, SECRETS  # tests/support

from stsync.errors import ConfigError
from stsync.referralfactory.client import ReferralFactoryClient
from stsync.storage.config import default_config
from stsync.storage.ledger import Ledger


class Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_given_pieces_are_used_as_they_are_and_left_open(make_connection, tmp_path):
    servicetitan, referral_factory = Closable(), Closable()
    ledger = Ledger.open(tmp_path / "given.sqlite3")
    conn = make_connection(servicetitan=servicetitan, referral_factory=referral_factory, ledger=ledger)
    assert (conn.servicetitan, conn.referral_factory, conn.ledger) == (servicetitan, referral_factory, ledger)
    conn.close()
    assert not servicetitan.closed and not referral_factory.closed
    assert ledger.recent_runs() == []  # still open: the test owns it
    ledger.close()


def test_built_pieces_are_built_once_on_first_use_and_closed(make_connection):
    conn = make_connection()
    assert "ledger" not in conn.__dict__ and not conn.paths.ledger.exists()  # nothing built yet
    ledger = conn.ledger
    assert conn.ledger is ledger and conn.paths.ledger.exists()
    conn.close()
    with pytest.raises(Exception, match="closed"):
        ledger.recent_runs()


def test_a_transport_carries_the_clients_the_connection_builds(make_connection):
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"id": CAMPAIGN, "code": "spring", "name": "Spring", "status": "launched"}})

    conn = make_connection(transport=httpx.MockTransport(answer))
    assert isinstance(conn.referral_factory, ReferralFactoryClient)
    assert conn.referral_factory.get_campaign(CAMPAIGN).name == "Spring"
    [request] = seen
    assert str(request.url) == f"{RF}/campaigns/{CAMPAIGN}"
    assert request.headers["Authorization"] == f"Bearer {SECRETS['rf_api_key']}"


def test_a_client_needs_its_identity_before_its_secrets(make_connection):
    conn = make_connection(default_config())
    with pytest.raises(ConfigError, match="servicetitan.tenant_id is not set") as caught:
        _ = conn.servicetitan
    assert caught.value.key_path == "servicetitan.tenant_id"
