"""Referred leads are recorded as seen where they are read — push-lead --new's search, single
pushes, webhook deliveries — with their referrer and sign-up day, without a request of their
own (stsync.tracking.referrals and its callers). The ledger and connection are the real ones;
Referral Factory is a fake that counts what it is asked."""

from __future__ import annotations

import time

import pytest
from webhook_fakes import PushRecorder  # tests/support

from stsync.leads import Lead
from stsync.referralfactory.models import Campaign, User
from stsync.services import lead_sources
from stsync.services.push import push_target
from stsync.tracking.referrals import read_referrer_details, record_leads_seen, signed_up_at_utc
from stsync.vocabulary import Kind
from stsync.webhooks.deliveries import Delivery, ServeStats
from stsync.webhooks.payload import LEAD_CREATED, LEAD_QUALIFIED
from stsync.webhooks.worker import DeliveryWorker

CAMPAIGN = 7


class SearchableReferralFactory:
    """The campaign's users; counts searches (pages read) and single-user reads."""

    def __init__(self, users: list[dict], *, per_page: int = 2) -> None:
        self.users = {u["id"]: {"campaign_id": CAMPAIGN, "qualified_at": None, **u} for u in users}
        self.per_page = per_page
        self.pages_read = 0
        self.users_read: list[object] = []

    def get_campaign(self, campaign_id):
        return Campaign(id=campaign_id, code="spring", name="Spring Referrals", status="launched")

    def search_users(self, conditions, **_):
        wanted = dict(conditions)
        matching = [u for u in self.users.values() if all(str(u.get(k)) == str(v) for k, v in wanted.items())]
        for start in range(0, len(matching), self.per_page):
            self.pages_read += 1
            for user in matching[start : start + self.per_page]:
                yield User.model_validate(user)

    def get_user(self, identifier):
        self.users_read.append(identifier)
        return User.model_validate(self.users[int(identifier)])

    def find_user_by_code(self, campaign_id, code):
        self.users_read.append(code)
        return next((User.model_validate(u) for u in self.users.values() if u["code"] == code), None)

    def find_user_by_email(self, campaign_id, email):
        self.users_read.append(email)
        return next((User.model_validate(u) for u in self.users.values() if u["email"] == email), None)


def lead_user(user_id: int, code: str, *, referrer: int | None = 900, signed_up_at: str | None = "2025-06-01") -> dict:
    return {"id": user_id, "code": code, "email": f"{code.lower()}@example.com", "first_name": code.title(),
            "type": "person_invited", "referrer_id": referrer, "signed_up_at": signed_up_at}


REFERRERS = [
    {"id": 900, "code": "REF900", "email": "nine@example.com", "first_name": "Nina", "type": "person_referring"},
    {"id": 901, "code": "REF901", "email": "ten@example.com", "first_name": "Theo", "type": "person_referring"},
]


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("2024-12-27", "2024-12-27T00:00:00.000Z"),
        ("2024-12-27 10:30:00", "2024-12-27T10:30:00.000Z"),
        ("2024-12-27T10:30:00+02:00", "2024-12-27T08:30:00.000Z"),
        ("2024-12-27T10:30:00Z", "2024-12-27T10:30:00.000Z"),
        ("2025-02-29", None),  # no such day: the lead is placed by when it was seen
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_signed_up_at_is_stored_as_a_utc_timestamp(text, stored):
    assert signed_up_at_utc(text) == stored


def test_push_lead_new_records_every_referred_lead_it_reads_booked_or_not(make_connection, monkeypatch):
    monkeypatch.setattr(lead_sources, "SEEN_BATCH", 2)
    rf = SearchableReferralFactory([lead_user(1, "AAA"), lead_user(2, "BBB", referrer=901), lead_user(3, "CCC", referrer=None),
                                    lead_user(4, "DDD", signed_up_at=None), *REFERRERS])
    conn = make_connection(referral_factory=rf)
    attempt = conn.ledger.record_push_intent("BBB", kind="lead", email="bbb@example.com", name="B")
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=5)  # booked already: not yielded, still seen

    leads = lead_sources.new_leads(conn, push_target(conn, Kind.LEAD))

    assert [lead.referral_code for lead in leads] == ["AAA", "CCC", "DDD"]
    stored = {code: conn.ledger.get_referred_lead(code) for code in ("AAA", "BBB", "CCC", "DDD")}
    assert all(row is not None and row.seen_by == "search" for row in stored.values())
    assert (stored["AAA"].rf_user_id, stored["AAA"].email, stored["AAA"].referrer_rf_user_id) == (1, "aaa@example.com", 900)
    assert stored["AAA"].signed_up_at == "2025-06-01T00:00:00.000Z" and stored["DDD"].signed_up_at is None
    assert stored["BBB"].referrer_rf_user_id == 901 and stored["CCC"].referrer_rf_user_id is None
    # No request of its own: the mapping reads no referrer_* field, so no referrer was read.
    assert rf.users_read == [] and conn.ledger.get_referred_lead("REF900") is None


def test_a_lead_is_recorded_before_it_is_handed_out(make_connection, monkeypatch):
    monkeypatch.setattr(lead_sources, "SEEN_BATCH", 100)
    rf = SearchableReferralFactory([lead_user(1, "AAA"), lead_user(2, "BBB"), lead_user(3, "CCC"), lead_user(4, "DDD")])
    conn = make_connection(referral_factory=rf)
    attempt = conn.ledger.record_push_intent("AAA", kind="lead", email="aaa@example.com", name="A")
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=5)
    leads = lead_sources.iter_new_leads(conn, push_target(conn, Kind.LEAD))
    assert next(leads).referral_code == "BBB"
    # Handed out: BBB, and AAA (booked, read before it) are recorded already.
    assert conn.ledger.get_referred_lead("BBB") is not None and conn.ledger.get_referred_lead("AAA") is not None
    leads.close()  # a run-level failure stops the run here: nothing more is read or written
    assert conn.ledger.get_referred_lead("CCC") is None


def test_the_searchs_leads_commit_without_waiting_for_the_disk_and_single_pushes_wait(make_connection):
    """push-lead --new records a new lead per commit on its hot path: not synced (the next
    search reads every lead again); what a single push names is synced as before."""
    rf = SearchableReferralFactory([lead_user(1, "AAA"), lead_user(2, "BBB")])
    conn = make_connection(referral_factory=rf)
    statements: list[str] = []
    conn.ledger._conn().set_trace_callback(statements.append)
    try:
        lead_sources.new_leads(conn, push_target(conn, Kind.LEAD))
        search = list(statements)
        statements.clear()
        lead_sources.record_seen(conn, [Lead(email="c@example.com", referral_code="CCC")], push_target(conn, Kind.LEAD))
        single = list(statements)
    finally:
        conn.ledger._conn().set_trace_callback(None)

    def synchronous_of_each_insert(trace: list[str]) -> list[str]:
        level, levels = "FULL", []
        for sql in trace:
            if sql.startswith("PRAGMA synchronous = "):
                level = sql.removeprefix("PRAGMA synchronous = ")
            elif sql.lstrip().startswith("INSERT INTO referred_leads"):
                levels.append(level)
        return levels

    assert synchronous_of_each_insert(search) == ["NORMAL", "NORMAL"]
    assert synchronous_of_each_insert(single) == ["FULL"]
    assert conn.ledger.get_referred_lead("AAA") is not None and conn.ledger.get_referred_lead("CCC") is not None


def test_a_dry_run_and_referrers_record_nothing(make_connection):
    rf = SearchableReferralFactory([lead_user(1, "AAA"), *REFERRERS])
    conn = make_connection(referral_factory=rf)
    assert len(lead_sources.new_leads(conn, push_target(conn, Kind.LEAD), record=False)) == 1
    lead_sources.record_seen(conn, [Lead(email="r@example.com", referral_code="REF900")], push_target(conn, Kind.REFERRER))
    assert conn.ledger.referral_rows(joined_from="0", joined_before="9") == []


def test_single_pushes_record_their_leads_with_the_referrer_they_name(make_connection):
    conn = make_connection(referral_factory=SearchableReferralFactory([]))
    file_lead = Lead(email="jo@example.com", first_name="Jo", referral_code="FILE1", signed_up_at="2025-07-04",
                     referrer_email="nina@example.com", referrer_first_name="Nina", referrer_id=900)
    no_key = Lead(email="nokey@example.com")  # no referral code for the default externalId: not recorded
    lead_sources.record_seen(conn, [file_lead, no_key], push_target(conn, Kind.LEAD))
    stored = conn.ledger.get_referred_lead("FILE1")
    assert stored.seen_by == "push" and stored.signed_up_at == "2025-07-04T00:00:00.000Z"
    assert (stored.referrer_rf_user_id, stored.referrer_email, stored.referrer_name) == (900, "nina@example.com", "Nina")
    assert len(conn.ledger.referral_rows(joined_from="0", joined_before="9")) == 1


def test_a_lead_from_a_file_names_its_referrer_id():
    from stsync.leads import leads_from_json

    [lead] = leads_from_json({"email": "a@example.com", "code": "X", "referrer": {"id": 12, "email": "r@example.com"}})
    assert (lead.referrer_id, lead.referrer_email) == (12, "r@example.com")
    [lead] = leads_from_json({"email": "a@example.com", "code": "X", "referrer_id": "13"})
    assert lead.referrer_id == 13


@pytest.mark.parametrize("event", [LEAD_CREATED, LEAD_QUALIFIED])
def test_a_webhook_delivery_records_its_lead_as_seen_with_its_referrer(make_connection, event):
    rf = SearchableReferralFactory([lead_user(456, "UEONF", referrer=900), *REFERRERS])
    conn = make_connection(referral_factory=rf)
    worker = DeliveryWorker(conn, push_for=PushRecorder(conn), stats=ServeStats(), run_id=1)
    lead = Lead(email="ueonf@example.com", referral_code="UEONF", rf_user_id=456)
    worker.process(Delivery(key="k1", event=event, lead=lead, external_id="UEONF", received_at=time.time()))
    stored = conn.ledger.get_referred_lead("UEONF")
    assert stored is not None and stored.seen_by == "webhook" and stored.referrer_rf_user_id == 900
    if event == LEAD_CREATED:  # read with its referrer, as the booking needs
        assert (stored.referrer_email, stored.referrer_name) == ("nine@example.com", "Nina")


def test_referrers_known_by_id_alone_are_named_by_one_paged_search_stopped_when_all_are_found(make_connection):
    referrers = [{"id": 900 + i, "code": f"R{i}", "email": f"r{i}@example.com", "first_name": f"R{i}",
                  "type": "person_referring"} for i in range(6)]
    rf = SearchableReferralFactory([lead_user(1, "AAA", referrer=900), lead_user(2, "BBB", referrer=901), *referrers])
    conn = make_connection(referral_factory=rf)
    record_leads_seen(conn, [Lead(referral_code="AAA", referrer_id=900), Lead(referral_code="BBB", referrer_id=901)],
                      seen_by="search")
    assert read_referrer_details(conn) == (2, 2)
    assert rf.pages_read == 1  # both were on the first page: the rest was never read
    assert conn.ledger.get_referred_lead("BBB").referrer_email == "r1@example.com"
    assert read_referrer_details(conn) == (0, 0) and rf.pages_read == 1  # nothing left to name: no request
