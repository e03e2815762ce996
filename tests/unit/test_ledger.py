"""storage/ledger.py: schema v1, every method of the contract, threads and processes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from stsync.errors import ConfigError
from stsync.storage.ledger import MIGRATIONS, ContactRow, Ledger, utc_now
from stsync.storage.locks import pid_alive

TABLES = {
    "runs",
    "pushes",
    "push_attempts",
    "qualifications",
    "sync_positions",
    "referrers",
    "contacts",
    "return_fields",
    "webhook_deliveries",
    "kv",
    "st_bookings",
    "st_jobs",
    "job_events",
    "referred_leads",
}


@pytest.fixture
def ledger(tmp_path):
    opened = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    yield opened
    opened.close()


def _intent(ledger: Ledger, external_id: str, email: str = "ann@example.com", **extra) -> int:
    return ledger.record_push_intent(external_id, kind="lead", email=email, name="Ann", **extra)


# -- opening -------------------------------------------------------------------------------
def test_open_creates_the_whole_schema_in_wal_mode(tmp_path):
    path = tmp_path / "deep" / "ledger.sqlite3"
    ledger = Ledger.open(path)
    try:
        raw = sqlite3.connect(path)
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert TABLES <= tables
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()
        assert ledger.schema_version == len(MIGRATIONS)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        ledger.close()
    again = Ledger.open(path)  # a second open migrates nothing and keeps the data
    assert again.schema_version == len(MIGRATIONS)
    again.close()


def test_a_version_1_ledger_is_migrated_and_keeps_its_pushes_and_referrers(tmp_path):
    from stsync.storage.ledger import _statements

    path = tmp_path / "ledger.sqlite3"
    raw = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute(
        "INSERT INTO pushes (external_id, kind, state, booking_id, job_id, job_status, created_at, updated_at) "
        "VALUES ('OLD1', 'lead', 'booked', 501, 9001, 'Scheduled', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')"
    )
    raw.execute(
        "INSERT INTO referrers (customer_id, rf_user_id, email, state, updated_at) VALUES (7, 70, 'a@x.com', 'created', 'x')"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()

    with Ledger.open(path) as ledger:
        assert ledger.schema_version == len(MIGRATIONS)
        push = ledger.get_push("OLD1")
        assert (push.booking_id, push.job_id, push.job_status, push.held_until) == (501, 9001, "Scheduled", None)
        assert ledger.bookings_for([501]) == {} and ledger.jobs_for([9001]) == {}
        record = ledger.get_referrer(7)
        assert (record.rf_user_id, record.state, record.shared_with) == (70, "created", None)
        ledger.upsert_referrer(8, state="shared", email="A@x.com", shared_with=7)
        assert [r.customer_id for r in ledger.referrers_by_email("a@X.com")] == [7, 8]
        assert ledger.get_referrer(8).shared_with == 7
        assert [r.customer_id for r in ledger.referrers_sharing()] == [8]


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(ConfigError, match="newer stsync") as caught:
        Ledger.open(path)
    assert caught.value.hint == "upgrade stsync"


def test_a_damaged_file_is_a_config_error(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(ConfigError, match="cannot be opened") as caught:
        Ledger.open(path)
    assert "move it aside" in caught.value.hint


def test_utc_now_is_iso_utc():
    now = utc_now()
    assert now.endswith("Z") and now[10] == "T" and len(now) == len("2024-01-01T00:00:00.000Z")


# -- runs ----------------------------------------------------------------------------------
def test_runs_start_finish_and_list(ledger):
    first = ledger.start_run("push", "push-lead --new")
    second = ledger.start_run("sync", "sync-customers")
    running = ledger.last_run("push")
    assert running.id == first and running.outcome == "running" and running.pid == os.getpid()
    ledger.finish_run(first, "partial", {"created": 2, "failed": 1}, error="1 lead failed")
    done = ledger.last_run("push")
    assert (done.outcome, done.counts, done.error) == ("partial", {"created": 2, "failed": 1}, "1 lead failed")
    assert done.finished_at is not None
    assert [run.id for run in ledger.recent_runs()] == [second, first]
    assert [run.id for run in ledger.recent_runs(job="sync")] == [second]
    assert len(ledger.recent_runs(limit=1)) == 1
    assert ledger.last_run("qualify") is None
    with pytest.raises(ValueError):
        ledger.finish_run(first, "running", {})
    with pytest.raises(ValueError):
        ledger.finish_run(12345, "ok", {})


def test_a_running_run_of_a_dead_process_reads_as_interrupted(ledger):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run_id = ledger.start_run("sync", "sync-customers")
    with ledger.transaction() as conn:
        conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (child.pid, run_id))
    assert not pid_alive(child.pid)
    assert ledger.last_run("sync").outcome == "interrupted"
    assert ledger.recent_runs()[0].outcome == "interrupted"
    raw = ledger.transaction  # the row itself is not rewritten by a reader
    with raw() as conn:
        assert conn.execute("SELECT outcome FROM runs WHERE id = ?", (run_id,)).fetchone()[0] == "running"


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(None) and not pid_alive(0)


# -- pushes --------------------------------------------------------------------------------
def test_push_intent_then_created(ledger):
    run_id = ledger.start_run("push", "push-lead")
    attempt = ledger.record_push_intent(
        "CODE1", kind="lead", email="Ann@Example.com", name="Ann", rf_user_id=11, referral_code="CODE1", run_id=run_id
    )
    push = ledger.get_push("CODE1")
    assert (push.state, push.kind, push.rf_user_id, push.referral_code, push.final) == ("pending", "lead", 11, "CODE1", False)
    assert [a.outcome for a in ledger.unfinished_intents()] == ["intent"]
    ledger.record_push_result(attempt, outcome="created", booking_id=501)
    push = ledger.get_push("CODE1")
    assert (push.state, push.booking_id) == ("booked", 501)
    (recorded,) = ledger.push_attempts(external_id="CODE1")
    assert (recorded.outcome, recorded.booking_id, recorded.run_id) == ("created", 501, run_id)
    assert recorded.finished_at is not None
    assert ledger.unfinished_intents() == []


def test_failed_then_booked_and_a_later_failure_does_not_unbook(ledger):
    error = {"service": "servicetitan", "status": 400, "errors": {"Email": ["invalid"]}}
    first = _intent(ledger, "C2")
    ledger.record_push_result(first, outcome="failed", error=error)
    assert ledger.get_push("C2").state == "failed"
    assert ledger.push_attempts(external_id="C2")[0].error == error
    second = _intent(ledger, "C2")
    assert ledger.get_push("C2").state == "failed"  # an intent keeps the state as it is
    ledger.record_push_result(second, outcome="already_booked", booking_id=77)
    assert ledger.get_push("C2").state == "booked"
    third = _intent(ledger, "C2")
    ledger.record_push_result(third, outcome="failed", error={"message": "boom"})
    assert (ledger.get_push("C2").state, ledger.get_push("C2").booking_id) == ("booked", 77)


def test_lost_and_skipped_leave_the_state(ledger):
    attempt = _intent(ledger, "C3")
    ledger.record_push_result(attempt, outcome="lost", error={"message": "timeout"})
    assert ledger.get_push("C3").state == "pending"
    attempt = _intent(ledger, "C3")
    ledger.record_push_result(attempt, outcome="skipped")
    assert ledger.get_push("C3").state == "pending"


def test_creates_in_doubt_are_intents_and_unknown_attempts_until_settled(ledger):
    killed = _intent(ledger, "C7")  # a run killed between its POST and its record
    lost = _intent(ledger, "C7")
    ledger.record_push_result(lost, outcome="unknown", error={"message": "unknown — will be checked again: HTTP 500"})
    assert ledger.get_push("C7").state == "pending"  # in doubt: neither booked nor failed
    assert [a.id for a in ledger.attempts_in_doubt("C7")] == [killed, lost]
    assert [a.outcome for a in ledger.push_attempts(failed_only=True)] == ["unknown"]
    assert [a.id for a in ledger.unknown_attempts()] == [lost]
    ledger.record_push_result(lost, outcome="created", booking_id=9)  # found later: it was created
    ledger.record_push_result(killed, outcome="created", booking_id=9)
    assert ledger.attempts_in_doubt("C7") == [] and ledger.unknown_attempts() == []
    assert (ledger.get_push("C7").state, ledger.get_push("C7").booking_id) == ("booked", 9)


def test_referrers_in_doubt_are_retried_and_errors_are_found_by_type(ledger):
    ledger.upsert_referrer(1, state="unknown", email="a@x.com", error={"type": "CreateInDoubt", "message": "m"})
    ledger.upsert_referrer(2, state="created", rf_user_id=20, email="b@x.com",
                           error={"type": "CustomFieldRefused", "stage": "return_fields", "message": "m"})
    ledger.upsert_referrer(3, state="created", rf_user_id=30, email="c@x.com")
    assert [r.customer_id for r in ledger.referrers_to_retry()] == [1, 2]
    assert [r.customer_id for r in ledger.referrers_with_error("CustomFieldRefused")] == [2]
    assert ledger.referrers_with_error("Nothing") == []


def test_push_result_validation(ledger):
    attempt = _intent(ledger, "C4")
    with pytest.raises(ValueError, match="booking_id"):
        ledger.record_push_result(attempt, outcome="created")
    with pytest.raises(ValueError):
        ledger.record_push_result(attempt, outcome="intent")
    with pytest.raises(ValueError, match="no push attempt"):
        ledger.record_push_result(99999, outcome="failed")
    with pytest.raises(ValueError):
        ledger.record_push_intent("C5", kind="customer", email=None, name=None)


def test_intent_upsert_keeps_known_values(ledger):
    _intent(ledger, "C6", rf_user_id=5, referral_code="C6")
    ledger.record_push_intent("C6", kind="lead", email="new@example.com", name=None)
    push = ledger.get_push("C6")
    assert (push.email, push.name, push.rf_user_id, push.referral_code) == ("new@example.com", "Ann", 5, "C6")


def test_attempt_queries(ledger):
    for code, email, outcome in [
        ("A", "a@x.com", "failed"),
        ("B", "b@x.com", "created"),
        ("A", "A@X.com", "lost"),
        ("C", "c@x.com", None),
    ]:
        attempt = _intent(ledger, code, email=email)
        if outcome:
            ledger.record_push_result(attempt, outcome=outcome, booking_id=1 if outcome == "created" else None)
    assert [a.external_id for a in ledger.push_attempts()] == ["C", "A", "B", "A"]  # newest first
    assert [a.outcome for a in ledger.push_attempts(email="a@x.COM")] == ["lost", "failed"]
    assert [a.outcome for a in ledger.push_attempts(failed_only=True)] == ["lost", "failed"]
    assert [a.outcome for a in ledger.recent_failures(limit=1)] == ["lost"]
    assert len(ledger.push_attempts(limit=2)) == 2
    assert [a.external_id for a in ledger.unfinished_intents()] == ["C"]
    assert ledger.unfinished_intents(external_id="A") == []
    assert [p.external_id for p in ledger.pushes_by_email("A@x.com")] == ["A"]
    assert ledger.push_counts() == {"failed": 1, "booked": 1, "pending": 1}


# -- qualification -------------------------------------------------------------------------
def test_tracking_open_bookings_and_qualifications(ledger):
    for code, booking in (("Q1", 1), ("Q2", 2)):
        ledger.record_push_result(_intent(ledger, code), outcome="created", booking_id=booking)
    _intent(ledger, "Q3")  # pending: not followed
    assert [p.external_id for p in ledger.open_bookings()] == ["Q1", "Q2"]
    assert ledger.update_tracking("Q1", booking_status="Converted", job_id=900, job_status="Completed")
    assert not ledger.update_tracking("nope", job_id=1)
    push = ledger.get_push("Q1")
    assert (push.booking_status, push.job_id, push.job_status, push.final) == ("Converted", 900, "Completed", False)
    ledger.update_tracking("Q1", job_status="Canceled")  # only what is given changes
    assert ledger.get_push("Q1").job_id == 900

    intent = ledger.record_qualification_intent("Q1", "qualify", rule="job_status", reason="job 900 Completed")
    assert ledger.get_push("Q1").qualification is None
    ledger.record_qualification_result(intent, state="done")
    push = ledger.get_push("Q1")
    assert push.qualification == "qualified" and push.qualified_at is not None
    ledger.update_tracking("Q1", final=True)
    assert [p.external_id for p in ledger.open_bookings()] == ["Q2"]

    failed = ledger.record_qualification_intent("Q2", "unqualify", rule="job_status", reason="job canceled")
    ledger.record_qualification_result(failed, state="failed", error={"status": 500})
    assert ledger.get_push("Q2").qualification is None
    retried = ledger.record_qualification_intent("Q2", "unqualify", rule="job_status", reason="job canceled")
    ledger.record_qualification_result(retried, state="done")
    assert ledger.get_push("Q2").qualification == "unqualified"
    history = ledger.qualifications_for("Q2")
    assert [(q.action, q.state, q.error) for q in history] == [("unqualify", "failed", {"status": 500}), ("unqualify", "done", None)]
    ledger.update_tracking("Q2", qualification="not_qualified", final=True)
    assert ledger.get_push("Q2").qualification == "not_qualified"
    with pytest.raises(ValueError):
        ledger.update_tracking("Q2", qualification="maybe")
    with pytest.raises(ValueError):
        ledger.record_qualification_result(retried, state="intent")
    with pytest.raises(ValueError):
        ledger.record_qualification_intent("Q2", "approve", rule=None, reason=None)


# -- sync state ----------------------------------------------------------------------------
def test_positions(ledger):
    assert ledger.get_position("customers") is None
    ledger.set_position("customers", "tok-1")
    ledger.set_position("customers", "tok-2")
    ledger.set_position("contacts", None)
    assert (ledger.get_position("customers"), ledger.get_position("contacts")) == ("tok-2", None)


def test_referrers_upsert_only_given_columns(ledger):
    ledger.upsert_referrer(10, email="Bo@x.com", state="pending", fingerprint="f1")
    ledger.upsert_referrer(10, state="created", rf_user_id=501, code="BO1", url="https://r/BO1")
    record = ledger.get_referrer(10)
    assert (record.email, record.fingerprint, record.state, record.rf_user_id, record.code) == ("Bo@x.com", "f1", "created", 501, "BO1")
    ledger.upsert_referrer(11, state="failed", email="cy@x.com", error={"status": 422})
    ledger.upsert_referrer(12, state="skipped", skip_reason="no_email")
    assert ledger.get_referrer(11).error == {"status": 422}
    assert ledger.referrer_by_email("bo@X.com").customer_id == 10
    assert ledger.referrer_by_email("nobody@x.com") is None
    assert ledger.referrer_counts() == {"created": 1, "failed": 1, "skipped": 1}
    ledger.upsert_referrer(10, error={"message": "return field not written"})
    assert [r.customer_id for r in ledger.referrers_to_retry()] == [10, 11]
    ledger.upsert_referrer(10, error=None)
    assert [r.customer_id for r in ledger.referrers_to_retry()] == [11]
    assert ledger.get_referrer(99) is None
    with pytest.raises(TypeError):
        ledger.upsert_referrer(10, colour="red")
    with pytest.raises(ValueError):
        ledger.upsert_referrer(10, state="weird")


def test_contacts(ledger):
    written = ledger.upsert_contacts(
        [
            ContactRow(contact_id=1, customer_id=10, type="Email", value="a@x.com", active=True, modified_on="2024-01-01T00:00:00Z"),
            {"id": 2, "customer_id": 10, "type": "MobilePhone", "value": "555", "active": False},
            {"contact_id": 3, "customer_id": 11, "type": "Email", "value": "b@x.com"},
        ]
    )
    assert written == 3
    ledger.upsert_contacts([{"id": 1, "customer_id": 10, "type": "Email", "value": "new@x.com"}])
    found = ledger.contacts_for([10, 11, 12])
    assert [c.value for c in found[10]] == ["new@x.com", "555"]
    assert found[10][1].active is False and found[11][0].active is True
    assert found[12] == []
    assert ledger.upsert_contacts([]) == 0


def test_contacts_for_many_ids(ledger):
    ledger.upsert_contacts([{"id": i, "customer_id": i, "type": "Email", "value": f"{i}@x.com"} for i in range(1, 1201)])
    found = ledger.contacts_for(range(1, 1301))
    assert len(found) == 1300
    assert sum(len(rows) for rows in found.values()) == 1200


def test_return_fields(ledger):
    assert ledger.get_return_fields(10) == {}
    ledger.set_return_field(10, "Referral Link", "https://r/1")
    ledger.set_return_field(10, "Referral Code", "C1")
    ledger.set_return_field(10, "Referral Link", "https://r/2")
    assert ledger.get_return_fields(10) == {"Referral Code": "C1", "Referral Link": "https://r/2"}


def test_webhook_deliveries_are_admitted_once_and_waiting_ones_again(ledger):
    lead = {"email": "ann@example.com", "referral_code": "C1"}
    admit = lambda key, **kw: ledger.admit_delivery(key, event="lead_created", external_id="C1", lead=lead, payload={"n": key}, **kw)  # noqa: E731
    assert admit("k1") == "new"
    assert admit("k1") == "waiting"  # no outcome yet: process it
    assert admit("k2") == "new"
    assert [(r.key, r.lead, r.payload) for r in ledger.deliveries_to_process()] == [("k1", lead, {"n": "k1"}), ("k2", lead, {"n": "k2"})]
    ledger.finish_delivery("k1", "created")
    assert admit("k1") == "done"
    ledger.finish_delivery("k2", "failed", "bad payload")
    assert ledger.get_delivery("k2").error == {"message": "bad payload"} and ledger.get_delivery("k2").finished_at
    assert admit("k3") == "new"
    assert admit("k2") == "retry"  # failed before: retrying, queued after k3
    assert admit("k2") == "waiting"
    assert [r.key for r in ledger.deliveries_to_process()] == ["k3", "k2"]
    assert ledger.get_delivery("k2").outcome == "retrying" and ledger.get_delivery("k2").waiting
    assert ledger.get_delivery("k9") is None


def test_deliveries_recorded_before_the_payload_migration_are_kept_and_still_waiting(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    raw = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    raw.execute("INSERT INTO webhook_deliveries (key, event, received_at) VALUES ('old', 'lead_created', '2025-01-01T00:00:00Z')")
    raw.commit()
    raw.close()
    ledger = Ledger.open(path)
    try:
        [record] = ledger.deliveries_to_process()
        assert (record.key, record.lead, record.seq) == ("old", None, 1)
        # Sent again, it brings what the old stsync did not keep.
        assert ledger.admit_delivery("old", event="lead_created", external_id=None, lead={"rf_user_id": 5}, payload={"id": 5}) == "waiting"
        assert ledger.get_delivery("old").lead == {"rf_user_id": 5}
    finally:
        ledger.close()


def test_close_abandoned_runs_closes_only_dead_processes_runs(ledger):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = ledger.start_run("serve", "serve")
    with ledger.transaction() as tx:
        tx.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead.pid, gone))
    mine = ledger.start_run("serve", "serve")
    other_job = ledger.start_run("push", "push-lead --new")
    with ledger.transaction() as tx:
        tx.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead.pid, other_job))
    assert ledger.close_abandoned_runs("serve") == [gone]
    assert ledger.close_abandoned_runs("serve") == []
    rows = {row["id"]: row["outcome"] for row in ledger._query("SELECT id, outcome FROM runs")}
    assert rows == {gone: "interrupted", mine: "running", other_job: "running"}


def test_kv(ledger):
    assert ledger.get("last_diagnose") is None
    ledger.put("last_diagnose", '{"ok": true}')
    ledger.put("last_diagnose", "again")
    assert ledger.get("last_diagnose") == "again"


# -- transactions --------------------------------------------------------------------------
def test_a_rolled_back_transaction_leaves_nothing(ledger):
    with pytest.raises(RuntimeError):
        with ledger.transaction() as conn:
            ledger.upsert_referrer(1, conn=conn, state="skipped", skip_reason="no_email")
            ledger.set_position("customers", "tok", conn=conn)
            ledger.upsert_contacts([{"id": 1, "customer_id": 1, "type": "Email", "value": "x"}], conn=conn)
            ledger.set_return_field(1, "Referral Code", "C", conn=conn)
            ledger.put("k", "v")  # joins the open transaction too
            raise RuntimeError("crash mid-page")
    assert ledger.get_referrer(1) is None
    assert ledger.get_position("customers") is None
    assert ledger.contacts_for([1]) == {1: []}
    assert ledger.get_return_fields(1) == {}
    assert ledger.get("k") is None


def test_a_committed_transaction_is_seen_by_another_connection(ledger, tmp_path):
    with ledger.transaction() as conn:
        ledger.upsert_referrer(1, conn=conn, state="created")
        ledger.set_position("customers", "tok", conn=conn)
    other = Ledger.open(ledger.path)
    try:
        assert other.get_referrer(1).state == "created" and other.get_position("customers") == "tok"
    finally:
        other.close()


FULL, NORMAL = 2, 1  # PRAGMA synchronous


@pytest.mark.parametrize("fails", [False, True])
def test_a_transaction_that_need_not_be_durable_commits_without_syncing_and_only_it(ledger, fails):
    assert ledger._conn().execute("PRAGMA synchronous").fetchone()[0] == FULL
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with ledger.transaction(durable=False) as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == NORMAL
            ledger.put("k", "v")  # joins it, and its durability
            if fails:
                raise RuntimeError("crash")
    assert ledger.get("k") == (None if fails else "v")
    # Every other write of this connection waits for the disk again.
    assert ledger._conn().execute("PRAGMA synchronous").fetchone()[0] == FULL
    with ledger.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == FULL
    other = Ledger.open(ledger.path)
    try:
        assert other.get("k") == (None if fails else "v")
    finally:
        other.close()


def test_closed_ledger_refuses_work(tmp_path):
    ledger = Ledger.open(tmp_path / "l.sqlite3")
    ledger.close()
    with pytest.raises(Exception, match="closed"):
        ledger.get("x")


# -- concurrency ---------------------------------------------------------------------------
def test_threads_share_one_ledger(ledger):
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(25):
                attempt = _intent(ledger, f"T{worker}-{i % 5}")
                ledger.record_push_result(attempt, outcome="created", booking_id=worker * 100 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ledger.push_attempts(limit=1000)) == 150
    assert ledger.push_counts() == {"booked": 30}
    assert ledger.unfinished_intents() == []


def _intents_from_threads(ledger, external_ids: list[str]) -> tuple[dict[str, int], dict[str, BaseException]]:
    """Each external id's intent recorded by a thread of its own, all queued while the test
    holds the writer lock, then let go together."""
    ids: dict[str, int] = {}
    errors: dict[str, BaseException] = {}

    def record(external_id: str) -> None:
        try:
            ids[external_id] = _intent(ledger, external_id)
        except BaseException as exc:
            errors[external_id] = exc

    threads = [threading.Thread(target=record, args=(external_id,)) for external_id in external_ids]
    with ledger._writer:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(ledger._intents) < len(external_ids) and time.monotonic() < deadline:
            time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=10)
    return ids, errors


def test_intents_that_come_together_share_one_commit(ledger, monkeypatch):
    transactions: list[str] = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: transactions.append(sql) if sql.startswith("BEGIN") else None)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    external_ids = [f"G{n}" for n in range(6)]
    ids, errors = _intents_from_threads(ledger, external_ids)
    assert errors == {}
    assert sorted(ids) == external_ids and len(set(ids.values())) == 6
    assert len(transactions) == 1  # one commit, one wait for the disk, for the six of them
    other = Ledger.open(ledger.path)  # committed, not merely written
    try:
        assert sorted(a.external_id for a in other.unfinished_intents()) == external_ids
    finally:
        other.close()


def test_an_intent_that_fails_fails_alone(ledger, monkeypatch):
    from stsync.storage import ledger as ledger_module

    insert = ledger_module._Intent.insert

    def failing(self, conn):
        if self.values[0] == "BAD":
            raise sqlite3.OperationalError("disk I/O error")
        return insert(self, conn)

    monkeypatch.setattr(ledger_module._Intent, "insert", failing)
    ids, errors = _intents_from_threads(ledger, ["A", "BAD", "B", "C"])
    # SQLite's error reaches the caller as stsync's, as for every other write (Ledger._translate).
    from stsync.errors import StateUnusable

    assert list(errors) == ["BAD"] and isinstance(errors["BAD"], StateUnusable)
    assert "disk I/O error" in str(errors["BAD"])
    assert sorted(ids) == ["A", "B", "C"]
    assert sorted(a.external_id for a in ledger.unfinished_intents()) == ["A", "B", "C"]
    assert {a.id for a in ledger.unfinished_intents()} == set(ids.values())


def test_connections_of_finished_threads_are_closed(ledger):
    def read_once() -> None:
        ledger.get("x")

    for _ in range(20):  # e.g. one thread per webhook request
        thread = threading.Thread(target=read_once)
        thread.start()
        thread.join()
    ledger.get("x")  # this thread's connection prunes the finished ones
    assert ledger.open_connections <= 2


WORKER = textwrap.dedent(
    """
    import sys
    from stsync.storage.ledger import Ledger
    path, worker = sys.argv[1], int(sys.argv[2])
    ledger = Ledger.open(path)
    for i in range(50):
        code = f"P{i % 10}"  # every process writes the same ten pushes
        attempt = ledger.record_push_intent(code, kind="lead", email=f"{code}@x.com", name=str(worker))
        ledger.record_push_result(attempt, outcome="failed" if (i // 10) % 2 else "created", booking_id=i, error={"w": worker})
    ledger.close()
    """
)


def test_four_processes_write_consistently(tmp_path):
    path = tmp_path / "ledger.sqlite3"  # not created yet: the four also race to create the schema
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(n)]) for n in range(4)]
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0, 0, 0]
    ledger = Ledger.open(path)
    try:
        attempts = ledger.push_attempts(limit=1000)
        assert len(attempts) == 200
        assert len({a.id for a in attempts}) == 200
        assert sum(1 for a in attempts if a.outcome == "created") == 4 * 30
        assert sum(1 for a in attempts if a.outcome == "failed") == 4 * 20
        assert ledger.unfinished_intents() == []
        # Every push got a "created" at some point, and a later failure never un-books.
        assert ledger.push_counts() == {"booked": 10}
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("raised", "failed", "outcome", "error"),
    [
        (None, False, "ok", None),
        (None, True, "partial", None),
        (KeyboardInterrupt(), False, "interrupted", "interrupted by the user"),
        (ConfigError("leads.fields.name is unmapped"), False, "failed", "leads.fields.name is unmapped"),
        (RuntimeError("boom"), False, "failed", "RuntimeError: boom"),
    ],
)
def test_recorded_run_records_how_the_block_ended_and_its_final_counts(ledger, raised, failed, outcome, error):
    counts = {"created": 0}
    with pytest.raises(type(raised)) if raised else _no_error():
        with ledger.recorded_run("push", "push-lead --new", counts=lambda: counts, failed=lambda: failed) as run_id:
            counts["created"] = 3  # read at the end: a stopped run still records what it did
            if raised:
                raise raised
    run = ledger.last_run("push")
    assert run.id == run_id and run.outcome == outcome and run.error == error
    assert run.counts == {"created": 3}


def _no_error():
    import contextlib

    return contextlib.nullcontext()


# -- the ServiceTitan mirror -------------------------------------------------------------------
def _booking(booking_id: int, modified_on: str, *, status: str = "New", job_id: int | None = None, external_id: str = "X"):
    from stsync.storage.ledger import BookingRow

    return BookingRow(booking_id, external_id, status, job_id, "2025-01-01T00:00:00.000Z", modified_on, utc_now())


def test_an_older_copy_of_a_booking_never_overwrites_a_newer_one(ledger):
    ledger.upsert_bookings([_booking(1, "2025-02-01T00:00:00.000Z", status="Converted", job_id=9)])
    ledger.upsert_bookings([_booking(1, "2025-01-15T00:00:00.000Z", status="New")])  # a repeated, older row
    assert ledger.bookings_for([1])[1].status == "Converted"
    ledger.upsert_bookings([_booking(1, "2025-02-01T00:00:00.000Z", status="Converted")])  # the same version again
    assert ledger.bookings_for([1])[1].job_id == 9
    ledger.upsert_bookings([_booking(1, "2025-02-02T00:00:00.000Z", status="Converted")])  # a newer one without it
    assert ledger.bookings_for([1])[1].job_id == 9, "a job id is never lost"
    ledger.upsert_bookings([_booking(2, "2025-01-01T00:00:00.000Z", external_id="X"), _booking(3, "2025-01-01T00:00:00.000Z", external_id="Y")])
    assert [b.booking_id for b in ledger.bookings_with_external_id("X")] == [1, 2]
    assert ledger.booking_ids_known([1, 3, 4]) == {1, 3}


def test_jobs_keep_their_first_completion_and_history_is_replaced_whole(ledger):
    from stsync.storage.ledger import JobRow

    def row(status, modified, completed=None):
        return JobRow(9, 1, status, "2025-01-01T00:00:00.000Z", completed, None, 120.5, 77, modified, utc_now())

    ledger.upsert_jobs([row("Completed", "2025-02-01T00:00:00.000Z", completed="2025-02-01T00:00:00.000Z")])
    ledger.upsert_jobs([row("InProgress", "2025-02-02T00:00:00.000Z")])
    stored = ledger.jobs_for([9])[9]
    assert (stored.status, stored.completed_on, stored.total, stored.invoice_id) == (
        "InProgress", "2025-02-01T00:00:00.000Z", 120.5, 77,
    )
    ledger.replace_job_history(9, [("history:1", "Scheduled", "2025-01-01T00:00:00.000Z"), ("history:2", "Completed", "2025-02-01T00:00:00.000Z")])
    assert ledger.observe_job_status(9, "InProgress", "2025-02-02T00:00:00.000Z")
    assert not ledger.observe_job_status(9, "InProgress", "2025-02-02T00:00:00.000Z"), "seen once"
    ledger.replace_job_history(9, [("history:1", "Scheduled", "2025-01-01T00:00:00.000Z")])
    events = ledger.job_events_for([9, 10])
    assert [(e.status, e.source) for e in events[9]] == [("Scheduled", "history"), ("InProgress", "observed")]
    assert events[10] == []


def test_a_timestamp_position_only_moves_forward(ledger):
    ledger.advance_position("feed", "2025-02-01T00:00:00.000Z")
    ledger.advance_position("feed", "2025-01-01T00:00:00.000Z")  # a slower run finishing later
    assert ledger.get_position("feed") == "2025-02-01T00:00:00.000Z"
    ledger.advance_position("feed", "2025-03-01T00:00:00.000Z")
    assert ledger.get_position("feed") == "2025-03-01T00:00:00.000Z"
    ledger.advance_number("offset", -7_200_000)
    ledger.advance_number("offset", -9_000_000)  # a lower bound: the larger one is kept
    assert ledger.get_position("offset") == "-7200000"
    ledger.advance_number("offset", 1500)
    assert ledger.get_position("offset") == "1500"


def test_a_hold_is_recorded_and_cleared(ledger):
    attempt = _intent(ledger, "H1")
    ledger.record_push_result(attempt, outcome="created", booking_id=5)
    ledger.set_held_until("H1", "2025-07-01T00:00:00.000Z")
    assert [p.external_id for p in ledger.held_pushes()] == ["H1"]
    assert ledger.get_push("H1").held_until == "2025-07-01T00:00:00.000Z"
    ledger.set_held_until("H1", None)
    assert ledger.held_pushes() == [] and ledger.get_push("H1").held_until is None


def test_writers_of_one_process_queue_instead_of_failing(ledger):
    import threading

    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(30):
                attempt = _intent(ledger, f"Q{n}-{i}")
                ledger.record_push_result(attempt, outcome="created", booking_id=n * 100 + i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and ledger.push_counts() == {"booked": 240}


# -- exit codes, skipped ticks and what status and the alerts read ---------------------------------
def test_a_ledger_of_schema_1_gains_exit_codes_and_keeps_its_runs(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    raw = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            raw.execute(statement)
    raw.execute("INSERT INTO runs (job, command, pid, started_at, outcome) VALUES ('push', 'push-lead --new', 1, '2024-01-01T00:00:00.000Z', 'ok')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with Ledger.open(path) as ledger:
        [run] = ledger.recent_runs()
        assert (run.command, run.outcome, run.exit_code) == ("push-lead --new", "ok", None)
        ledger.set_exit_code([run.id], 0)
        assert ledger.get_run(run.id).exit_code == 0


def test_exit_codes_go_onto_the_runs_a_process_started_and_a_cut_short_run_reads_interrupted(ledger):
    before = ledger.last_run_id()
    done = ledger.start_run("sync", "sync-customers --ongoing")
    ledger.finish_run(done, "partial", {"failed": 1})
    cut = ledger.start_run("push", "push-lead --new")
    assert [r.id for r in ledger.runs_started_by(os.getpid(), after_id=before)] == [done, cut]
    assert ledger.runs_started_by(os.getpid(), after_id=cut) == []
    ledger.set_exit_code([done, cut], 5)
    assert (ledger.get_run(done).outcome, ledger.get_run(done).exit_code) == ("partial", 5)
    cut_run = ledger.get_run(cut)
    assert (cut_run.outcome, cut_run.exit_code) == ("interrupted", 5) and cut_run.finished_at


def test_a_skipped_tick_is_recorded_but_is_not_the_last_run(ledger):
    ran = ledger.start_run("sync", "sync-customers --ongoing --full")
    ledger.finish_run(ran, "ok", {})
    skipped = ledger.record_finished_run("sync", "sync-customers --ongoing", outcome="skipped", exit_code=7, error="held by pid 9")
    assert ledger.get_run(skipped).outcome == "skipped" and ledger.get_run(skipped).exit_code == 7
    assert ledger.last_run("sync").id == ran
    assert ledger.last_succeeded_run("sync").id == ran
    assert ledger.last_succeeded_run("sync", command_contains="--full").id == ran
    assert ledger.last_succeeded_run("push") is None and ledger.first_run("sync").id == ran
    with pytest.raises(ValueError):
        ledger.record_finished_run("sync", "x", outcome="running", exit_code=None)


def test_open_failures_are_the_records_own_and_still_unresolved(ledger):
    auth = {"type": "AuthError", "message": "refused", "exit_code": 4}
    refused = {"type": "ServiceTitanApiError", "message": "bad name", "exit_code": 1, "status": 400}
    # A record refused by ServiceTitan: open. The same lead booked later: resolved.
    a = _intent(ledger, "ANN")
    ledger.record_push_result(a, outcome="failed", error=refused)
    b = _intent(ledger, "BOB", email="bob@example.com")
    ledger.record_push_result(b, outcome="failed", error=refused)
    b2 = _intent(ledger, "BOB", email="bob@example.com")
    ledger.record_push_result(b2, outcome="created", booking_id=7)
    # A run-level failure recorded on a record (credentials) is the run's, not the record's.
    c = _intent(ledger, "CAT", email="cat@example.com")
    ledger.record_push_result(c, outcome="failed", error=auth)
    # A hand-edited row that is not JSON still reads (as the record's own).
    d = _intent(ledger, "DAN", email="dan@example.com")
    ledger.record_push_result(d, outcome="failed", error=None)
    with ledger.transaction() as conn:
        conn.execute("UPDATE push_attempts SET error = 'not json' WHERE id = ?", (d,))
    count, newest = ledger.failed_pushes()
    assert count == 2 and [x.external_id for x in newest] == ["DAN", "ANN"]
    assert ledger.failed_pushes(since=utc_now())[0] == 0

    ledger.upsert_referrer(1, state="failed", email="x@example.com", error=refused)
    ledger.upsert_referrer(2, state="created", email="y@example.com", error={"stage": "return_fields", **refused})
    ledger.upsert_referrer(3, state="failed", email="z@example.com", error={"type": "TemporaryError", "exit_code": 6})
    ledger.upsert_referrer(4, state="skipped", skip_reason="no_email")
    count, rows = ledger.failed_referrers()
    assert count == 2 and {r.customer_id for r in rows} == {1, 2}

    ledger.update_tracking("BOB", booking_status="Converted")
    q = ledger.record_qualification_intent("BOB", "qualify", rule="job_created", reason="job created")
    ledger.record_qualification_result(q, state="failed", error=refused)
    assert ledger.failed_qualifications()[0] == 1
    ledger.update_tracking("BOB", final=True)
    assert ledger.failed_qualifications()[0] == 0

    ledger.admit_delivery("k1", event="lead_created", external_id="ANN", lead={"referral_code": "ANN"}, payload={"code": "ANN"})
    ledger.admit_delivery("k2", event="lead_created", external_id="EVE", lead={"referral_code": "EVE"}, payload={"code": "EVE"})
    ledger.admit_delivery("k3", event="lead_created", external_id="FAY", lead={"referral_code": "FAY"}, payload={"code": "FAY"})
    ledger.finish_delivery("k1", "failed", {"message": "no"})
    ledger.finish_delivery("k3", "retrying", {"message": "no"})
    assert ledger.failed_deliveries()[0] == 1
    waiting, oldest = ledger.waiting_deliveries()
    assert waiting == 2 and oldest is not None


def test_a_failed_run_keeps_its_error_as_data_for_diagnose(tmp_path):
    from stsync.errors import AuthError

    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        with pytest.raises(AuthError):
            with ledger.recorded_run("push", "push-lead --new", counts=lambda: {"total": 0}, failed=lambda: False):
                raise AuthError("ServiceTitan rejected the Client ID / Client Secret", hint="stsync connect")
        run = ledger.last_run("push")
        assert run is not None and run.outcome == "failed"
        assert run.error == "ServiceTitan rejected the Client ID / Client Secret"
        assert run.failure == {
            "type": "AuthError", "message": run.error, "hint": "stsync connect", "exit_code": 4,
        }  # fmt: skip


def test_acknowledgements_are_kept_per_kind_and_record_and_moved_by_a_second_one(tmp_path):
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        first = ledger.acknowledge("push", "CODE1", note="a test lead")
        assert ledger.acknowledgements("push") == {"CODE1": first}
        assert ledger.acknowledgements("sync") == {}
        again = ledger.acknowledge("push", "CODE1")
        assert again.acknowledged_at >= first.acknowledged_at and again.note is None
        assert list(ledger.acknowledgements("push").values()) == [again]
