"""vocabulary + storage.states: every closed vocabulary's strings are the ones files, ledgers and
JSON outputs already hold — renaming a member's value must fail here, not in a user's ledger."""

from __future__ import annotations

import json
import sqlite3

import pytest

from stsync import vocabulary
from stsync.servicetitan.vocabulary import JOB_STATUSES
from stsync.storage import states
from stsync.storage.config import default_config, parse_config_text
from stsync.storage.config_writer import render_config
from stsync.storage.ledger import MIGRATIONS, Ledger

STORED = {
    vocabulary.Environment: ["production", "integration"],
    vocabulary.Action: ["create_booking", "nothing"],
    vocabulary.QualificationRule: ["none", "job_created", "job_status"],
    vocabulary.UnqualifyEvent: ["job_canceled", "booking_dismissed"],
    vocabulary.SyncMode: ["one_time", "ongoing"],
    vocabulary.RunMode: ["once", "ongoing"],
    vocabulary.ReturnValue: ["referral_link", "referral_code"],
    vocabulary.Kind: ["lead", "referrer"],
    vocabulary.LogFormat: ["text", "json"],
    states.RunJob: ["push", "sync", "qualify", "serve", "run"],
    states.RunOutcome: ["running", "ok", "partial", "failed", "interrupted", "skipped"],
    states.PushState: ["pending", "booked", "failed"],
    states.AttemptOutcome: ["intent", "created", "already_booked", "failed", "lost", "skipped", "unknown"],
    states.QualificationAction: ["qualify", "unqualify"],
    states.QualificationState: ["intent", "done", "failed"],
    states.QualificationValue: ["qualified", "unqualified", "not_qualified"],
    states.ReferrerState: ["pending", "created", "adopted", "updated", "skipped", "failed", "unknown", "shared"],
    states.DeliveryOutcome: [
        "queued", "duplicate", "rejected", "ignored", "recorded", "failed", "retrying", "created", "already_booked", "skipped",
        "unknown",
    ],
}


@pytest.mark.parametrize("vocabulary_class", list(STORED), ids=lambda v: v.__name__)
def test_each_vocabulary_keeps_its_stored_strings(vocabulary_class):
    assert [str(word) for word in vocabulary_class] == STORED[vocabulary_class]
    for word in vocabulary_class:
        assert word == word.value and f"{word}" == word.value and json.dumps(word) == json.dumps(word.value)
        assert {word.value: 1}[word] == 1  # a plain string read back finds its member's entry


def test_the_default_job_status_is_a_servicetitan_job_status():
    assert vocabulary.DEFAULT_JOB_STATUS in JOB_STATUSES


def test_every_config_mode_has_a_run_mode():
    assert set(vocabulary.RUN_MODE_FOR) == set(vocabulary.SyncMode)


def test_the_other_environment():
    assert vocabulary.Environment.PRODUCTION.other is vocabulary.Environment.INTEGRATION
    assert vocabulary.Environment.INTEGRATION.other is vocabulary.Environment.PRODUCTION


def test_the_config_file_holds_the_strings_and_loads_the_members():
    text = render_config(default_config())
    assert 'action = "create_booking"' in text and 'mode = "one_time"' in text and 'rule = "none"' in text
    assert '"create_booking" | "nothing"' in text  # the comment lists the vocabulary
    loaded = parse_config_text(text.replace('action = "create_booking"', 'action = "nothing"', 1))
    assert loaded.leads.action is vocabulary.Action.NOTHING
    assert loaded.customer_sync.mode is vocabulary.SyncMode.ONE_TIME


def test_the_ledger_stores_plain_strings(tmp_path):
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        attempt = ledger.record_push_intent("code1", kind=vocabulary.Kind.REFERRER, email="a@example.com", name="A")
        ledger.record_push_result(attempt, outcome=states.AttemptOutcome.CREATED, booking_id=7)
        ledger.upsert_referrer(1, state=states.ReferrerState.ADOPTED)
    raw = sqlite3.connect(tmp_path / "ledger.sqlite3")
    rows = raw.execute(
        "SELECT p.kind, typeof(p.kind), p.state, a.outcome, typeof(a.outcome), r.state "
        "FROM pushes p JOIN push_attempts a USING (external_id), referrers r"
    ).fetchall()
    raw.close()
    assert rows == [("referrer", "text", "booked", "created", "text", "adopted")]


def test_the_schema_defaults_are_the_first_states():
    schema = MIGRATIONS[0]
    assert f"outcome TEXT NOT NULL DEFAULT '{states.RunOutcome.RUNNING}'" in schema
    assert f"state TEXT NOT NULL DEFAULT '{states.PushState.PENDING}'" in schema
    assert f"outcome TEXT NOT NULL DEFAULT '{states.AttemptOutcome.INTENT}'" in schema
    assert f"state TEXT NOT NULL DEFAULT '{states.QualificationState.INTENT}'" in schema
    assert f"state TEXT NOT NULL DEFAULT '{states.ReferrerState.PENDING}'" in schema


def test_the_ledger_refuses_a_word_outside_the_vocabulary(tmp_path):
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        with pytest.raises(ValueError, match="push kind must be one of lead, referrer, not 'customer'"):
            ledger.record_push_intent("code1", kind="customer", email=None, name=None)
        with pytest.raises(ValueError, match="referrer state must be one of pending, created"):
            ledger.upsert_referrer(1, state="booked")
