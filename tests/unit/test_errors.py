"""stsync.errors: which failures stop a run over many records, and which are the record's."""

from __future__ import annotations

import pytest

from stsync import errors
from stsync.errors import stops_run


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
