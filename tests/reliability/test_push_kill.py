"""kill -9 in the middle of `push-lead --new`, ten times, then a run to completion: every
lead has exactly one booking (SPEC §6.1, §6.5).

The sandbox runs in this process; the CLI runs as a real subprocess talking to it over
sockets, and is killed with SIGKILL at seeded random moments — between a POST and its
record, inside SQLite transactions, while holding the run lock and key locks.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from kills import kill_after_requests

from stsync.cli.app import run
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config

LEADS = 100
KILLS = 10


@pytest.mark.slow  # ten seeded kills along the run, then a run to the end: about 10 s
def test_push_new_killed_ten_times_then_completed_books_every_lead_exactly_once(isolated, monkeypatch, capsys):
    from stsync.sandbox import Sandbox
    from stsync.storage.ledger import Ledger

    # Latency and 4 workers spread a whole run's work (~1.5 s) over the kill window.
    with Sandbox(seed=21, customers=3, leads=LEADS, st_per_second=2_000, rf_per_minute=60_000, latency=0.03) as sb:
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        assert run([*sb.connect_args(), "--secrets-store", "file"]) == 0
        config_path = isolated / "config.toml"
        config = load_config(config_path)
        config.limits.servicetitan_per_second = 2_000
        config.limits.referral_factory_per_minute = 60_000
        config.limits.workers = 4
        # The sandbox lists a booking by externalId at once: an intent a kill left is settled
        # after this grace period (stsync.lookup_grace), kept short to keep the test quick.
        config.limits.lookup_grace_seconds = 2
        save_config(config, config_path)
        capsys.readouterr()
        codes = {u["code"] for u in sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")}
        assert len(codes) == LEADS

        rng = random.Random(20240917)
        command = [sys.executable, "-m", "stsync", "push-lead", "--new"]
        booked_after_kill: list[int] = []
        for _ in range(KILLS):
            process = subprocess.Popen(command, env=dict(os.environ), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # After 0–25 of the run's own booking POSTs: ten kills land along the 100 leads.
            kill_after_requests(process, sb, rng.randint(0, 25), method="POST", service="servicetitan")
            process.wait(timeout=30)
            booked_after_kill.append(len(sb.bookings()))

        final = subprocess.run([sys.executable, "-m", "stsync", "--json", "push-lead", "--new"], env=dict(os.environ),
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert final.returncode == 0, final.stderr

        per_external_id = Counter(b["externalId"] for b in sb.bookings())
        assert set(per_external_id) == codes
        assert [e for e, n in per_external_id.items() if n != 1] == []
        # The kills landed while bookings were being made, not only before or after.
        assert any(0 < n < LEADS for n in booked_after_kill), booked_after_kill

        ledger = Ledger.open(isolated / "state" / "default" / "ledger.sqlite3")
        try:
            assert ledger.unfinished_intents() == []
            assert ledger.push_counts() == {"booked": LEADS}
            assert {ledger.get_push(code).booking_id for code in codes} == {b["id"] for b in sb.bookings()}
            outcomes = Counter(run.outcome for run in ledger.recent_runs(limit=50, job="push"))
            assert outcomes["interrupted"] >= 1 and outcomes["ok"] >= 1
            # Whether a seeded kill lands between a POST and its record depends on the machine's
            # load, so it is not asserted here (it flaked on a loaded clean-clone CI run): both
            # ways such an intent is settled (found by externalId → created/already booked; not
            # found → lost, then created) are proved deterministically in tests/unit/test_push.py.
            attempts = Counter(a.outcome for a in ledger.push_attempts(limit=10_000))
            assert attempts["created"] == LEADS and attempts["failed"] == 0
        finally:
            ledger.close()
