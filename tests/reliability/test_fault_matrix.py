"""The fault matrix: `push-lead --new`, then `qualify`, then `sync-customers --once`, each
run once under one kind of trouble between stsync and the two APIs. Each run must end with
the right state — read back from the sandbox, not from stsync's own report:

- push: exactly one booking per lead (externalId = its referral code), recorded as booked
  in the ledger with the booking ServiceTitan holds, no attempt left unfinished;
- qualify (rule job_created): exactly the converted bookings' referrals qualified, one
  ``done`` qualification each in the ledger, nothing left as an intent;
- sync: exactly one Referral Factory user per eligible customer, its link and code written
  back to the customer, every other custom field untouched, no referrer left pending/failed.

The columns (``stsync.sandbox.Faults``): 10 % of requests answered 503 before anything
happens; writes applied and then answered 500 (the answer is lost, the change is not); 429
bursts with ``Retry-After``; tokens that stop working long before ``expires_in`` says;
2-second latency spikes. Every run also checks that its fault really fired, so a test
cannot pass on a run the fault missed.

A create whose answer was lost and whose booking (or user) is not found right after is
never sent again by the run that lost it: that run exits 6 ("unknown — will be checked
again") and the next one, as cron would start it, settles it (``stsync.lookup_grace``). So
each command runs like cron: again while it exits 6, at most ``MAX_RUNS`` times, the fault
still armed; every run but the last must exit 6, the last 0.

One sandbox and one connection per column; the CLI runs in-process over real sockets, with
the rate limits (sandbox and config) scaled up so a clean run takes a fraction of a second,
and a grace period of ``GRACE_SECONDS`` (this sandbox lists what was created at once).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from customer_sync_expectations import ENROLLED, custom_values, expected_outcomes

from stsync.sandbox import Faults
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths

ST_PER_SECOND = 1_000
RF_PER_MINUTE = 60_000
LEADS = 10
CUSTOMERS = 40
RETURN_FIELDS = ("Referral Link", "Referral Code")
SPIKE_SECONDS = 2.0
BURST = 3
GRACE_SECONDS = 1
MAX_RUNS = 5  # a create refused 5 times in a row by a 10 % fault: about 1 in 100,000


# --------------------------------------------------------------------------------------
# Observing the sandbox
# --------------------------------------------------------------------------------------
def statuses(sb, *, service: str | None = None) -> Counter:
    return Counter(r.status for r in sb.request_log if r.service != "admin" and (service is None or r.service == service))


def write_statuses(sb) -> Counter:
    return Counter(r.status for r in sb.request_log if r.method in ("POST", "PUT", "PATCH") and r.service != "auth")


def tokens_issued(sb) -> int:
    return sum(1 for r in sb.request_log if r.service == "auth" and r.status == 200)


# --------------------------------------------------------------------------------------
# The columns
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observed:
    """What one run under a fault looked like: its wall time, and whether a 429 burst was armed."""

    elapsed: float
    burst_armed: bool


@dataclass(frozen=True)
class Arming:
    """How a fault is armed for one command, and the evidence afterwards that it fired."""

    faults: Faults
    fired: Callable[[Any, Observed], bool]
    expire_tokens: bool = False
    # A 429 burst is armed once this many ServiceTitan API requests were answered, so it
    # lands mid-run, while workers send in parallel; None = armed from the start.
    burst_after: int | None = None


def _503(sb, seen: Observed) -> bool:
    return statuses(sb)[503] >= 1


def _lost_answers(sb, seen: Observed) -> bool:
    return write_statuses(sb)[500] >= 1


def _burst(size: int) -> Callable[[Any, Observed], bool]:
    def fired(sb, seen: Observed) -> bool:
        return seen.burst_armed and statuses(sb, service="servicetitan")[429] == size

    return fired


def _expired_tokens(sb, seen: Observed) -> bool:
    return statuses(sb)[401] >= 1 and tokens_issued(sb) >= 1


def _spiked(sb, seen: Observed) -> bool:
    return seen.elapsed >= SPIKE_SECONDS


# The draws are seeded; which request meets which draw depends on thread timing, how many of
# the first N requests fail does not.
ERRORS_503 = Arming(Faults(error_rate=0.10, seed=7), _503)
LOST_ANSWERS = Arming(Faults(commit_then_500_rate=0.3, seed=3), _lost_answers)
# Tokens die after 30 requests although expires_in says 900: 401s mid-run, then refreshes.
# Counted in requests, not seconds: a 0.1 s lifetime died before its first use on a loaded
# runner, and a fresh token that is rejected fails the run by design. 30 is well above the
# requests the workers can have in flight at once, so a fresh token always serves its caller.
SHORT_TOKENS = Arming(Faults(token_uses=30, latency=0.015), _expired_tokens, expire_tokens=True)
# Seed 22 at 3 %: the 3rd draw spikes (and the 101st: a second spike in a long run).
SPIKES = Arming(Faults(spike_rate=0.03, spike_seconds=SPIKE_SECONDS, seed=22), _spiked)

COLUMNS: dict[str, dict[str, Arming]] = {
    "503_10pct": {"push": ERRORS_503, "qualify": ERRORS_503, "sync": ERRORS_503},
    "commit_then_500": {"push": LOST_ANSWERS, "qualify": LOST_ANSWERS, "sync": LOST_ANSWERS},
    "429_bursts": {
        "push": Arming(Faults(burst_429=BURST, retry_after=1), _burst(BURST), burst_after=4),
        # qualify sends two or three ServiceTitan reads one after another: a burst at the start.
        "qualify": Arming(Faults(burst_429=1, retry_after=1), _burst(1)),
        # sync: a wider burst while its workers write in parallel, each waiting as told.
        "sync": Arming(Faults(burst_429=2 * BURST, retry_after=1), _burst(2 * BURST), burst_after=6),
    },
    "token_expiry": {"push": SHORT_TOKENS, "qualify": SHORT_TOKENS, "sync": SHORT_TOKENS},
    # qualify makes a few reads and idempotent PUTs: a spike only makes it slower.
    "latency_spikes": {"push": SPIKES, "sync": SPIKES},
}


def like_cron(command: Callable[[], Any]) -> Callable[[], list[Any]]:
    """``command`` run again while it exits 6 (a create in doubt), at most MAX_RUNS times: the runs' results."""

    def runs() -> list[Any]:
        results = [command()]
        while results[-1].exit_code == 6 and len(results) < MAX_RUNS:
            results.append(command())
        return results

    return runs


def run_under(arming: Arming, sb, command: Callable[[], Any]) -> Any:
    """Arm the fault, run ``command`` (arming a 429 burst mid-run), disarm; the command's result."""
    mid_run = arming.burst_after is not None
    sb.clear_request_log()
    sb.set_faults(Faults() if mid_run else arming.faults)
    if arming.expire_tokens:
        sb.expire_tokens()  # the token cached by earlier commands dies too
    stop = threading.Event()
    armed = threading.Event()
    if not mid_run:
        armed.set()

    def arm_burst_mid_run() -> None:
        while not stop.is_set():
            if sb.count_requests(service="servicetitan") >= arming.burst_after:
                sb.set_faults(arming.faults)
                armed.set()
                return
            time.sleep(0.002)

    armer = threading.Thread(target=arm_burst_mid_run, daemon=True)
    if mid_run:
        armer.start()
    started = time.monotonic()
    try:
        result = command()
    finally:
        seen = Observed(elapsed=time.monotonic() - started, burst_armed=armed.is_set())
        stop.set()
        if mid_run:
            armer.join(timeout=5)
        sb.set_faults(None)
    assert arming.fired(sb, seen), f"the fault did not fire as planned: {statuses(sb)}, {seen}"
    return result


# --------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    """Backoff between retries a tenth as long: the schedule itself is unit-tested
    (tests/unit/test_http.py); here only the end state counts, and the suite must stay fast.
    Retry-After waits and latency spikes are untouched."""
    from stsync.http import RetryPolicy

    real_backoff = RetryPolicy.backoff
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, failures: real_backoff(self, failures) / 10)


@pytest.fixture
def connected_sandbox(make_sandbox, cli, isolated, monkeypatch):
    """A sandbox with scaled-up limits and a connection to it (config limits scaled too)."""
    sb = make_sandbox(st_per_second=ST_PER_SECOND, rf_per_minute=RF_PER_MINUTE, leads=LEADS, customers=CUSTOMERS)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    result = cli(*sb.connect_args(), "--secrets-store", "file")
    assert result.exit_code == 0, str(result)
    config_path = isolated / "config.toml"
    config = load_config(config_path)
    config.limits.servicetitan_per_second = ST_PER_SECOND
    config.limits.referral_factory_per_minute = RF_PER_MINUTE
    config.limits.lookup_grace_seconds = GRACE_SECONDS
    save_config(config, config_path)
    return sb


@pytest.fixture
def ledger(isolated):
    led = Ledger.open(ConnectionPaths.for_config(isolated / "config.toml").ledger)
    yield led
    led.close()


# --------------------------------------------------------------------------------------
# The end states
# --------------------------------------------------------------------------------------
def check_runs(results: list) -> None:
    """Every run but the last left a create in doubt (exit 6); the last one finished (exit 0)."""
    assert [r.exit_code for r in results] == [6] * (len(results) - 1) + [0], "\n".join(map(str, results))


def check_push(sb, led: Ledger, results: list, leads: list[dict]) -> None:
    check_runs(results)
    booked = sum(r.json["counts"]["created"] + r.json["counts"]["already_booked"] for r in results)
    assert all(r.json["counts"]["failed"] == 0 for r in results) and booked == len(leads), [r.json["counts"] for r in results]
    bookings = sb.bookings()
    per_external_id = Counter(b["externalId"] for b in bookings)
    assert set(per_external_id) == {lead["code"] for lead in leads}, "a lead without its booking, or a stray booking"
    duplicates = {code: n for code, n in per_external_id.items() if n != 1}
    assert duplicates == {}, f"more than one booking for an externalId: {duplicates}"
    booking_of = {b["externalId"]: b["id"] for b in bookings}
    for lead in leads:
        push = led.get_push(lead["code"])
        assert push is not None and push.state == "booked", (lead["code"], push)
        assert push.booking_id == booking_of[lead["code"]], "the ledger names another booking than ServiceTitan holds"
    assert led.unfinished_intents() == [], "an attempt left without its result"


def check_qualify(sb, led: Ledger, result, user_of_code: dict[str, int], converted: set[str]) -> None:
    assert result.exit_code == 0, str(result)
    assert result.json["counts"]["qualified"] == len(converted), result.json["counts"]
    assert {code for code, user_id in user_of_code.items() if sb.qualified(user_id)} == converted
    for code in user_of_code:
        records = led.qualifications_for(code)
        done = [q.action for q in records if q.state == "done"]
        assert done == (["qualify"] if code in converted else []), (code, records)
        assert [q for q in records if q.state == "intent"] == [], code


def check_sync(sb, led: Ledger, results: list, expected: dict, users_before: int, others_before: dict) -> None:
    check_runs(results)
    report = results[-1].json
    assert report["counts"]["failed"] == 0 and report["complete"], report
    enrolled = {cid: email for cid, (outcome, email) in expected.items() if outcome in ENROLLED}
    shared = {cid: email for cid, (outcome, email) in expected.items() if outcome == "shared"}
    created = sum(1 for outcome, _ in expected.values() if outcome == "created")
    users = sb.rf_users(campaign_id=sb.credentials.campaign_id)
    assert len(users) == users_before + created, "a duplicate user, or a customer left out"
    by_email: dict[str, list[dict]] = {}
    for user in users:
        by_email.setdefault(user["email"].casefold(), []).append(user)
    for customer_id, email in {**enrolled, **shared}.items():
        matches = by_email.get(email.casefold(), [])
        assert len(matches) == 1, (customer_id, email, matches)
        values = custom_values(sb.customer(customer_id))
        assert (values.get("Referral Link"), values.get("Referral Code")) == (matches[0]["url"], matches[0]["code"])
    for customer in sb.customers():
        values = custom_values(customer)
        # An empty value ("") is not sent back: it may be gone, nothing else may.
        assert {k: v for k, v in values.items() if k not in RETURN_FIELDS and v != ""} == others_before[customer["id"]]
        if customer["id"] not in enrolled and customer["id"] not in shared:
            assert not values.get("Referral Code") and not values.get("Referral Link"), customer["id"]
    counts = led.referrer_counts()
    assert not {"pending", "failed", "unknown"} & set(counts), counts
    assert counts.get("shared", 0) == len(shared)
    assert sum(counts.get(state, 0) for state in ("created", "adopted", "updated")) == len(enrolled)


# --------------------------------------------------------------------------------------
# The matrix: one test per column, the three commands in the order cron would run them
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", list(COLUMNS))
def test_each_command_ends_in_the_right_state_under(column, connected_sandbox, cli, ledger):
    sb = connected_sandbox
    arming = COLUMNS[column]
    leads = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")
    assert len(leads) == LEADS

    # push-lead --new: one booking per lead.
    results = run_under(arming["push"], sb, like_cron(lambda: cli("--json", "push-lead", "--new")))
    check_push(sb, ledger, results, leads)
    if column == "commit_then_500":
        # A booking whose answer was lost was looked up, found, and never POSTed again.
        posts = Counter(r.status for r in sb.request_log if r.method == "POST" and r.path.endswith("/bookings"))
        assert posts[500] >= 1 and sum(posts.values()) == LEADS, posts

    # qualify: the even bookings became jobs.
    if "qualify" in arming:
        assert cli("map", "qualify", "job-created").exit_code == 0
        user_of_code = {lead["code"]: lead["id"] for lead in leads}
        bookings = sorted(sb.bookings(), key=lambda b: b["id"])[::2]
        for booking in bookings:
            sb.convert_booking_to_job(booking["id"])
        result = run_under(arming["qualify"], sb, lambda: cli("--json", "qualify"))
        check_qualify(sb, ledger, result, user_of_code, {b["externalId"] for b in bookings})

    # sync-customers --once: one referrer per eligible customer, return fields written.
    expected = expected_outcomes(sb)
    assert sum(1 for outcome, _ in expected.values() if outcome == "created") >= 20
    users_before = len(sb.rf_users(campaign_id=sb.credentials.campaign_id))
    others_before = {
        c["id"]: {k: v for k, v in custom_values(c).items() if k not in RETURN_FIELDS and v != ""} for c in sb.customers()
    }
    results = run_under(arming["sync"], sb, like_cron(lambda: cli("--json", "sync-customers", "--once")))
    check_sync(sb, ledger, results, expected, users_before, others_before)
