"""storage/ledger.py: schema v1, every method of the contract, threads and processes."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading

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
}


@pytest.fixture
def ledger(tmp_path):
    opened = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    yield opened
    opened.close()


def _intent(ledger: Ledger, external_id: str, email: str = "ann@example.com", **extra) -> int:
    return ledger.record_push_intent(external_id, kind="lead", email=email, name="Ann", **extra)


# -- opening -------------------------------------------------------------------------------
def test_open_creates_schema_v1_in_wal_mode(tmp_path):
    path = tmp_path / "deep" / "ledger.sqlite3"
    ledger = Ledger.open(path)
    try:
        raw = sqlite3.connect(path)
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert TABLES <= tables
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 1
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()
        assert ledger.schema_version == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        ledger.close()
    again = Ledger.open(path)  # a second open migrates nothing and keeps the data
    assert again.schema_version == 1
    again.close()


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


def test_webhook_deliveries(ledger):
    assert ledger.record_delivery("k1", event="user.created", external_id="C1") is True
    assert ledger.record_delivery("k1", event="user.created", external_id="C1") is False
    ledger.finish_delivery("k1", "pushed")
    ledger.record_delivery("k2", event="user.created", external_id=None)
    ledger.finish_delivery("k2", "failed", "bad payload")
    assert ledger.get_delivery("k1").outcome == "pushed"
    assert ledger.get_delivery("k2").error == {"message": "bad payload"}
    assert ledger.get_delivery("k3") is None


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
