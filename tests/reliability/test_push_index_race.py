"""`push-lead --new` asks its BookingIndex, not ServiceTitan lead by lead: a booking made by
someone else after the index was read must still not be made twice.

The sandbox runs in this process over real sockets; the batch runs in-process with an index
the test controls, and "someone else" is either another stsync process (the real CLI, on the
same ledger) or a client outside stsync writing straight to ServiceTitan's API (as Referral
Factory's own integration would). What ServiceTitan holds is read back from the sandbox.

- Another stsync: every creator holds the externalId's lock from its look-up to its ledger
  record, so the batch, taking the lock afterwards, finds the push recorded — however old its
  index (here: an hour's ``max_age``, the widest window there is).
- Outside stsync: the index is read again when older than its ``max_age`` (1 s by default)
  before a lead is created; a booking committed before that re-read began is found. (Inside
  that second nothing can see it: ServiceTitan has no conditional create — tracking.index.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from stsync.connection import Connection
from stsync.services.lead_sources import new_leads
from stsync.services.push import push_leads, push_target
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.paths import ConnectionPaths
from stsync.tracking.index import BookingIndex

RATE = 2_000


@pytest.fixture
def conn(make_sandbox, cli, isolated, monkeypatch):
    sb = make_sandbox(leads=6, customers=3, st_per_second=RATE, rf_per_minute=60_000)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    path = isolated / "config.toml"
    config = load_config(path)
    config.limits.servicetitan_per_second = RATE
    config.limits.referral_factory_per_minute = 60_000
    save_config(config, path)
    connection = Connection.open(ConnectionPaths.for_config(path), load_config(path))
    connection.sandbox = sb
    yield connection
    connection.close()


def bookings_per_external_id(sb) -> Counter:
    return Counter(b["externalId"] for b in sb.bookings())


def test_a_booking_another_stsync_made_after_the_index_was_read_is_not_made_again(conn):
    sb = conn.sandbox
    target = push_target(conn, "lead")
    leads = new_leads(conn, target)  # read before the other process books one of them
    index = BookingIndex(conn, max_age=3600)
    index.refresh()
    taken = leads[2]

    other = subprocess.run(
        [sys.executable, "-m", "stsync", "push-lead", "--code", taken.referral_code],
        env=dict(os.environ), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert other.returncode == 0, other.stderr
    assert index.refreshes == 1, "the index was not read again: its own read never saw that booking"
    sb.clear_request_log()

    report = push_leads(conn, leads, target, index=index)

    outcomes = {r.external_id: r.outcome for r in report.results}
    assert outcomes[taken.referral_code] == "already_booked"
    assert Counter(outcomes.values()) == {"created": len(leads) - 1, "already_booked": 1}
    assert set(bookings_per_external_id(sb).values()) == {1}
    # Found in the ledger, not by asking ServiceTitan: no look-up by externalId, no re-read.
    assert not [r for r in sb.request_log if r.method == "GET" and r.path.endswith("/bookings")]
    assert index.refreshes == 1


def test_a_booking_made_outside_stsync_after_the_index_was_read_is_found_by_the_next_read(conn):
    sb = conn.sandbox
    target = push_target(conn, "lead")
    leads = new_leads(conn, target)
    index = BookingIndex(conn, max_age=0.5)
    index.refresh()
    taken = leads[4]

    # Referral Factory's own integration books that lead straight through the API.
    from stsync.mapping.booking import booking_request_for

    conn.servicetitan.create_booking(conn.booking_provider, booking_request_for(taken, target.section))
    time.sleep(0.6)  # the index is now older than its max_age

    report = push_leads(conn, leads, target, index=index)

    outcomes = {r.external_id: r.outcome for r in report.results}
    assert outcomes[taken.referral_code] == "already_booked"
    assert set(bookings_per_external_id(sb).values()) == {1}
    assert index.refreshes >= 2
    assert conn.ledger.get_push(taken.referral_code).booking_id == sb.bookings(external_id=taken.referral_code)[0]["id"]


def test_the_index_is_read_once_per_max_age_whatever_the_number_of_workers(conn):
    sb = conn.sandbox
    target = push_target(conn, "lead")
    leads = new_leads(conn, target)
    index = BookingIndex(conn, max_age=3600)
    sb.clear_request_log()

    report = push_leads(conn, leads, target, index=index)

    assert Counter(r.outcome for r in report.results) == {"created": len(leads)}
    assert index.refreshes == 1
    lists = [r for r in sb.request_log if r.method == "GET" and r.path.endswith("/bookings")]
    assert len(lists) == 1 and "externalId" not in lists[0].query
