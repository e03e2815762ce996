"""stsync.errors: the one shape of an error as data (`to_dict`) and its reading back for a person
(`error_summary`), for rows written now and rows the ledger kept from before; which failures
stop a run over many records, and which are the record's."""

from __future__ import annotations

import json

import pytest

from stsync import errors
from stsync.cli.app import run
from stsync.errors import (
    ApiError,
    AuthError,
    ConfigError,
    InvalidRecord,
    ServiceTitanApiError,
    SetupRequired,
    StsyncError,
    error_summary,
    stops_run,
)


def test_every_error_gives_type_message_hint_exit_code_and_its_own_fields():
    assert StsyncError("boom").to_dict() == {"type": "StsyncError", "message": "boom", "hint": None, "exit_code": 1}
    assert AuthError("refused", hint="reconnect").to_dict() == {
        "type": "AuthError", "message": "refused", "hint": "reconnect", "exit_code": 4,
    }
    assert ConfigError("bad", key_path="leads.action").to_dict()["key_path"] == "leads.action"
    setup = SetupRequired("leads", ["summary", "external_id"]).to_dict()
    assert (setup["type"], setup["exit_code"], setup["key_path"]) == ("SetupRequired", 3, "leads.fields")
    assert (setup["section"], setup["missing"]) == ("leads", ["summary", "external_id"])
    invalid = InvalidRecord("no e-mail", record="JANE01", field="email").to_dict()
    assert (invalid["type"], invalid["exit_code"], invalid["record"], invalid["field"]) == ("InvalidRecord", 5, "JANE01", "email")


def test_an_api_error_carries_the_remotes_words():
    error = ServiceTitanApiError(
        "ServiceTitan answered HTTP 400", status=400, title="One or more validation errors occurred.",
        errors={"Name": ["The Name field is required."]}, trace_id="00-abc-01", method="POST", path="/bookings",
    ).to_dict()
    assert error == {
        "type": "ServiceTitanApiError", "message": "ServiceTitan answered HTTP 400", "hint": None, "exit_code": 1,
        "service": "servicetitan", "status": 400, "title": "One or more validation errors occurred.",
        "errors": {"Name": ["The Name field is required."]}, "trace_id": "00-abc-01", "method": "POST", "path": "/bookings",
    }
    assert error_summary(error) == "HTTP 400: One or more validation errors occurred. — Name: The Name field is required."


def test_error_summary_reads_rows_stored_before_to_dict_had_a_type():
    old_api_row = {"service": "servicetitan", "status": 409, "title": None, "errors": {}, "trace_id": None,
                   "method": "POST", "path": "/bookings", "message": "ServiceTitan answered HTTP 409"}
    assert error_summary(old_api_row) == "HTTP 409: ServiceTitan answered HTTP 409"
    assert error_summary({"type": "InvalidRecord", "message": "no e-mail", "field": "email"}) == "no e-mail"
    assert error_summary({"stage": "referrer", "status": 422}) == "{'stage': 'referrer', 'status': 422}"
    assert error_summary(None) == "" and error_summary({}) == ""


def test_the_json_error_object_is_the_errors_own_shape(capsys):
    assert run(["--json", "diagnose", "--email", " "]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out == {"schema": 1, "command": "diagnose", "ok": False, "exit_code": 2, "counts": {}, "failures": [], "error": {
        "type": "UsageError", "message": "--email needs an e-mail address", "hint": None, "exit_code": 2,
    }}
    assert ApiError("x", status=500).to_dict()["service"] == "remote"


@pytest.mark.parametrize(
    "exc",
    [
        errors.InvalidRecord("no e-mail", field="email"),
        errors.ServiceTitanApiError("refused", status=400),
        errors.ReferralFactoryApiError("refused", status=422),
        errors.DuplicateEmail("taken", status=422),
        errors.AnswerLost("lost"),
    ],
)
def test_the_records_own_failures_do_not_stop_a_run(exc):
    assert stops_run(exc) is False


@pytest.mark.parametrize(
    "exc",
    [
        errors.StsyncError("unexpected"),
        errors.UsageError("bad"),
        errors.ConfigError("bad mapping"),
        errors.SetupRequired("leads", ["external_id"]),
        errors.AuthError("key revoked"),
        errors.TemporaryError("down past the budget"),
        errors.RateLimited("429 past the budget"),
        errors.LockHeld("another run"),
        KeyError("a bug"),
        RuntimeError("a bug"),
    ],
)
def test_everything_else_stops_the_run(exc):
    assert stops_run(exc) is True
