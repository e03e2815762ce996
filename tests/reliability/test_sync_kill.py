"""kill -9 at random points during a 1,000-customer sync, ten times, then a run to the end:
exactly one Referral Factory user per eligible customer and every return field written.

The CLI runs as a real subprocess against a sandbox in this process, over sockets. The
sandbox's rate limits (and stsync's config) are scaled up so each run takes a few seconds;
the kills land anywhere: at startup, in the contacts feed, between an intent and its
POST, between a POST and its record, in the middle of a custom-field write, in a commit.
Each kill waits for a seeded number of the run's own writes (``kills.kill_after_requests``),
not for a time, so where the kills land does not depend on the machine's load.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from customer_sync_expectations import ENROLLED, custom_values, expected_outcomes
from kills import kill_after_requests

from stsync.cli.app import run
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths

CUSTOMERS = 1_000
KILLS = 10
RF_PER_MINUTE = 60_000
ST_PER_SECOND = 1_000
# The sandbox finds a user by search at once: a pending row a kill left is settled by the
# next run after this grace period (stsync.lookup_grace), kept short to keep the test quick.
GRACE_SECONDS = 2


@pytest.fixture
def sandbox(isolated, monkeypatch, capsys):
    from stsync.sandbox import Sandbox

    with Sandbox(seed=23, customers=CUSTOMERS, rf_per_minute=RF_PER_MINUTE, st_per_second=ST_PER_SECOND) as sb:
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        assert run([*sb.connect_args(), "--secrets-store", "file"]) == 0
        config = load_config(isolated / "config.toml")
        config.limits.referral_factory_per_minute = RF_PER_MINUTE
        config.limits.servicetitan_per_second = ST_PER_SECOND
        config.limits.lookup_grace_seconds = GRACE_SECONDS
        save_config(config, isolated / "config.toml")
        capsys.readouterr()
        yield sb


def sync_process() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stsync", "--json", "sync-customers", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def test_kill_9_ten_times_then_finish_exactly_one_user_per_customer(sandbox, isolated):
    sb = sandbox
    campaign = sb.credentials.campaign_id
    expected = expected_outcomes(sb)
    enrolled = {cid: email for cid, (outcome, email) in expected.items() if outcome in ENROLLED}
    shared = {cid: email for cid, (outcome, email) in expected.items() if outcome == "shared"}
    created = sum(1 for outcome, _ in expected.values() if outcome == "created")
    users_before = len(sb.rf_users(campaign_id=campaign))
    rng = random.Random(20250601)

    killed_while_running = 0
    for _ in range(KILLS):
        process = sync_process()
        # A whole pass makes ~1,700 writes and reads; ten kills after 0–250 of a run's own
        # requests land all along it (each run resumes where the one before was killed).
        if kill_after_requests(process, sb, rng.randint(0, 250)):
            killed_while_running += 1
        process.communicate(timeout=30)

    finished = subprocess.run(
        [sys.executable, "-m", "stsync", "--json", "sync-customers", "--once"],
        capture_output=True, text=True, env=dict(os.environ), timeout=60,
    )  # fmt: skip

    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(finished.stdout)
    assert report["counts"]["failed"] == 0 and report["complete"]
    assert killed_while_running >= KILLS - 2  # the kills really interrupted runs
    users = sb.rf_users(campaign_id=campaign)
    assert len(users) == users_before + created  # no duplicate, nothing extra
    by_email: dict[str, list[dict]] = {}
    for user in users:
        by_email.setdefault(user["email"].casefold(), []).append(user)
    for customer_id, email in {**enrolled, **shared}.items():
        matches = by_email.get(email.casefold(), [])
        assert len(matches) == 1, (customer_id, email, matches)
        values = custom_values(sb.customer(customer_id))
        assert (values.get("Referral Link"), values.get("Referral Code")) == (matches[0]["url"], matches[0]["code"])
    for customer_id, (outcome, _) in expected.items():
        if outcome not in ENROLLED and outcome != "shared":
            assert not custom_values(sb.customer(customer_id)).get("Referral Code")
    assert 429 not in {r.status for r in sb.request_log if r.service == "referral_factory"}
    # Kills landed between an intent and its record: those customers were searched for, then
    # adopted or created. Each successful create made one of the users counted above, and no
    # run that lived to log it ever tried to create an e-mail the campaign already had. (A
    # create cut off mid-send by a kill reaches the sandbox truncated and is refused: those
    # refusals are the kill's, not stsync's.)
    rf_requests = [r for r in sb.request_log if r.service == "referral_factory"]
    assert sum(1 for r in rf_requests if r.path.endswith("/users/search")) > 0
    assert sum(1 for r in rf_requests if r.method == "POST" and r.path.endswith("/users") and r.status == 201) == created
    log = ConnectionPaths.for_config(isolated / "config.toml").log_file.read_text()
    assert "already in the campaign" not in log
    with Ledger.open(ConnectionPaths.for_config(isolated / "config.toml").ledger) as ledger:
        counts = ledger.referrer_counts()
        assert not {"pending", "failed", "unknown"} & set(counts)
        assert sum(counts.get(state, 0) for state in ("created", "adopted", "updated")) == len(enrolled)
        assert counts.get("shared", 0) == len(shared)
        runs = ledger.recent_runs(limit=KILLS + 1, job="sync")
        # A kill during the CLI's startup comes before the run is recorded; the others read
        # as interrupted (their pid is dead).
        assert runs[0].outcome == "ok" and "interrupted" in {r.outcome for r in runs[1:]}
        assert "running" not in {r.outcome for r in runs}
