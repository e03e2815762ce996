"""push-lead --new reads the campaign while the search's first page is read (one round trip
before the first lead instead of two), and a campaign that cannot be read still stops the
run with its own error, as when it was read first (``lead_sources.iter_new_leads``)."""

from __future__ import annotations

import threading

import pytest
from test_referrals_seen import SearchableReferralFactory, lead_user

from stsync.errors import ConfigError, ReferralFactoryApiError
from stsync.services import lead_sources
from stsync.services.push import push_target
from stsync.vocabulary import Kind

WAIT = 10.0  # seconds: far beyond any scheduling delay; only a sequential read waits this long


class OverlapRecorder(SearchableReferralFactory):
    """The campaign's answer waits until the search has asked for its first page: read one
    after the other, the campaign would wait for ever (``WAIT``) and the test fails."""

    def __init__(self, users, *, campaign_error: Exception | None = None, search_error: Exception | None = None):
        super().__init__(users)
        self.search_started = threading.Event()
        self.campaign_error = campaign_error
        self.search_error = search_error
        self.campaign_waited: bool | None = None

    def get_campaign(self, campaign_id):
        self.campaign_waited = self.search_started.wait(WAIT)
        if self.campaign_error is not None:
            raise self.campaign_error
        return super().get_campaign(campaign_id)

    def search_users(self, conditions, **kwargs):
        self.search_started.set()
        if self.search_error is not None:
            raise self.search_error
        yield from super().search_users(conditions, **kwargs)


def test_the_campaign_is_read_while_the_first_search_page_is(make_connection):
    rf = OverlapRecorder([lead_user(1, "AAA"), lead_user(2, "BBB")])
    conn = make_connection(referral_factory=rf)
    leads = lead_sources.new_leads(conn, push_target(conn, Kind.LEAD))
    assert rf.campaign_waited is True
    assert [(lead.referral_code, lead.campaign_name) for lead in leads] == [("AAA", "Spring Referrals"), ("BBB", "Spring Referrals")]


@pytest.mark.parametrize("search_fails_too", [False, True])
def test_a_campaign_that_cannot_be_read_stops_the_run_with_its_own_error(make_connection, search_fails_too):
    campaign_error = ConfigError("campaign 7 does not exist in Referral Factory")
    search_error = ReferralFactoryApiError("search refused", status=500) if search_fails_too else None
    rf = OverlapRecorder([lead_user(1, "AAA")], campaign_error=campaign_error, search_error=search_error)
    conn = make_connection(referral_factory=rf)
    with pytest.raises(ConfigError) as raised:
        lead_sources.new_leads(conn, push_target(conn, Kind.LEAD))
    assert raised.value is campaign_error
    assert conn.ledger.get_referred_lead("AAA") is None  # nothing handed out, nothing recorded


def test_an_empty_campaign_reads_the_campaign_and_yields_nothing(make_connection):
    rf = OverlapRecorder([])
    conn = make_connection(referral_factory=rf)
    assert lead_sources.new_leads(conn, push_target(conn, Kind.LEAD)) == []
    assert rf.campaign_waited is True
