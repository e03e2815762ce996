"""The ledger's side of the report: referred leads recorded as seen (migration 6), and the one
query that joins them with pushes and the ServiceTitan mirror (``referral_rows``)."""

from __future__ import annotations

import pytest

from stsync.storage.ledger import BookingRow, JobRow, Ledger, ReferredLeadRow, utc_now


@pytest.fixture
def ledger(tmp_path):
    opened = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    yield opened
    opened.close()


def seen(external_id: str, **values) -> ReferredLeadRow:
    base = dict(
        rf_user_id=None, email=None, name=None, referral_code=external_id, signed_up_at="2025-03-04T00:00:00.000Z",
        referrer_rf_user_id=None, referrer_email=None, referrer_name=None, referrer_code=None, seen_by="search",
        first_seen_at="2026-01-01T00:00:00.000Z",
    )
    base.update(values)
    return ReferredLeadRow(external_id=external_id, **base)


def booking(booking_id: int, external_id: str, *, status: str = "New", job_id: int | None = None) -> BookingRow:
    return BookingRow(booking_id, external_id, status, job_id, "2025-03-05T00:00:00.000Z", "2025-03-05T00:00:00.000Z", utc_now())


def job(job_id: int, booking_id: int, *, status: str, total: float | None = None, completed_on: str | None = None) -> JobRow:
    return JobRow(job_id, booking_id, status, "2025-03-06T00:00:00.000Z", completed_on, None, total, job_id + 1000,
                  "2025-03-07T00:00:00.000Z", utc_now())


def book(ledger: Ledger, external_id: str, booking_id: int, *, kind: str = "lead", **extra) -> None:
    attempt = ledger.record_push_intent(external_id, kind=kind, email=f"{external_id.lower()}@example.com", name="N", **extra)
    ledger.record_push_result(attempt, outcome="created", booking_id=booking_id)


def test_a_lead_seen_again_keeps_its_first_sighting_and_gains_what_it_lacked(ledger):
    ledger.record_referred_leads([seen("A1", email="ann@example.com", referrer_rf_user_id=3, seen_by="search")])
    ledger.record_referred_leads(
        [seen("A1", email=None, name="Ann", referrer_rf_user_id=3, referrer_email="ref@example.com", seen_by="webhook",
              first_seen_at="2026-02-02T00:00:00.000Z")]
    )
    stored = ledger.get_referred_lead("A1")
    assert stored.seen_by == "search" and stored.first_seen_at == "2026-01-01T00:00:00.000Z"
    assert (stored.email, stored.name, stored.referrer_email) == ("ann@example.com", "Ann", "ref@example.com")


def test_seeing_a_lead_again_unchanged_writes_nothing(ledger):
    ledger.record_referred_leads([seen("A1", email="ann@example.com")])
    # The upsert's WHERE skips an unchanged row: no UPDATE happens (total_changes() does not move).
    with ledger.transaction() as tx:
        before = tx.execute("SELECT total_changes()").fetchone()[0]
        ledger.record_referred_leads([seen("A1", email="ann@example.com"), seen("A1", email=None)], conn=tx)
        assert tx.execute("SELECT total_changes()").fetchone()[0] == before
        ledger.record_referred_leads([seen("A1", email="new@example.com")], conn=tx)
        assert tx.execute("SELECT total_changes()").fetchone()[0] == before + 1


def test_an_unknown_seen_by_is_refused(ledger):
    with pytest.raises(ValueError):
        ledger.record_referred_leads([seen("A1", seen_by="guess")])


def test_referral_rows_join_the_lead_its_push_its_booking_and_its_job(ledger):
    ledger.record_referred_leads(
        [
            seen("A1", referrer_rf_user_id=3),  # pushed: booking 11 → job 21 completed with a total
            seen("B2"),  # never pushed, but the provider has a booking with its externalId (made elsewhere)
            seen("C3"),  # seen only
            seen("D4", signed_up_at=None, first_seen_at="2025-03-20T10:00:00.000Z"),  # no sign-up day: placed when seen
            seen("E5", signed_up_at="2024-12-31T00:00:00.000Z"),  # outside the period
        ]
    )
    book(ledger, "A1", 11)
    book(ledger, "Z9", 19)  # a lead pushed before stsync kept the leads it saw: still a referral
    ledger.upsert_bookings([booking(11, "A1", status="Converted", job_id=21), booking(12, "B2", status="Dismissed"),
                            booking(13, "B2", status="New"), booking(19, "Z9")])
    ledger.upsert_jobs([job(21, 11, status="Completed", total=480.5, completed_on="2025-03-09T00:00:00.000Z")])
    ledger.update_tracking("A1", qualification="qualified", final=True)

    rows = {r.external_id: r for r in ledger.referral_rows(joined_from="2025-01-01T00:00:00.000Z",
                                                          joined_before="2026-01-01T00:00:00.000Z")}
    assert set(rows) == {"A1", "B2", "C3", "D4"}  # Z9's push dates from now (2026+), E5 from 2024
    a1 = rows["A1"]
    assert (a1.push_state, a1.booking_id, a1.job_id, a1.job_status, a1.job_total, a1.job_invoice_id) == (
        "booked", 11, 21, "Completed", 480.5, 1021)
    assert a1.qualification == "qualified" and a1.final and a1.referrer_rf_user_id == 3
    assert (rows["B2"].push_state, rows["B2"].booking_id, rows["B2"].booking_status) == (None, 12, "Dismissed")
    assert rows["C3"].booking_id is None and rows["C3"].joined_at_known
    assert rows["D4"].joined_at == "2025-03-20T10:00:00.000Z" and not rows["D4"].joined_at_known
    everything = ledger.referral_rows(joined_from="2000-01-01", joined_before="9999-01-01")
    assert "Z9" in {r.external_id for r in everything} and "E5" in {r.external_id for r in everything}
    assert ledger.referral_job_ids() == {21}


def test_referrers_known_by_id_alone_are_named_onto_their_leads(ledger):
    ledger.record_referred_leads(
        [
            seen("A1", referrer_rf_user_id=3),
            seen("A2", referrer_rf_user_id=3),
            seen("B1", referrer_rf_user_id=4, referrer_email="four@example.com"),  # named by its lead
            seen("C1", referrer_rf_user_id=5),  # a customer enrolled by customer sync
            seen("D1", referrer_rf_user_id=6),  # a referrer stsync pushed
        ]
    )
    ledger.upsert_referrer(10005, rf_user_id=5, email="five@example.com", state="created")
    book(ledger, "REF6", 66, kind="referrer", rf_user_id=6)
    assert ledger.referrers_lacking_details() == {3}
    assert ledger.fill_referrer_details([(3, "three@example.com", "Tre", "CODE3")]) == 2
    assert ledger.get_referred_lead("A2").referrer_name == "Tre"
    assert ledger.referrers_lacking_details() == set()
    known = {(k.rf_user_id, k.email, k.customer_id) for k in ledger.known_referrers()}
    assert (5, "five@example.com", 10005) in known and (6, "ref6@example.com", None) in known
