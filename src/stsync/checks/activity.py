"""Activity checks (diagnose): the ledger (opened, and every page checked: a damaged one is a
FAIL with the fix, and the checks that read the ledger do not run), who holds a run lock, how the last run of each job
ended, the pushes that failed and were never booked since — each with the lead's e-mail
and the exact error as recorded —, the creates in doubt ("unknown — will be checked again"),
the customers ServiceTitan refused because of their own custom field (a person must fix
those in ServiceTitan), and Referral Factory's shared rate-limit state (its 429 episodes of
the last hour, a cool-down or an IP block in force), read from the state dir without a
request.

Diagnose never creates a ledger: none yet means nothing ran, and the checks say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.checks.result import Verdict, fail, fail_with, ok, warn
from stsync.errors import StsyncError, error_summary
from stsync.ratelimit import IP_BLOCKED, local_and_utc, read_state
from stsync.storage.ledger import Ledger
from stsync.storage.locks import holder
from stsync.storage.states import UNKNOWN_LABEL, AttemptOutcome, PushState, ReferrerState, RunJob, RunOutcome
from stsync.vocabulary import HistoryKind

if TYPE_CHECKING:
    from stsync.storage.ledger import AttemptRecord, PushRecord
    from stsync.storage.paths import ConnectionPaths

# Other runs of push/sync/qualify are refused (exit 7) while one holds its lock: after this
# long a holder is probably stuck.
LONG_RUN_SECONDS = 6 * 3600
LOCKED_JOBS = tuple(RunJob)
# Held for as long as the service runs (months): never "stuck".
LONG_RUNNING_JOBS = (RunJob.SERVE, RunJob.RUN)
JOB_COMMANDS = {RunJob.PUSH: "push-lead", RunJob.SYNC: "sync-customers", RunJob.QUALIFY: "qualify"}
FAILURES_SHOWN = 10
FAILURES_SCANNED = 200


@dataclass(frozen=True)
class PushFailure:
    """A push that failed and was not booked since: who, which externalId, the error as recorded."""

    email: str | None
    external_id: str
    kind: str | None
    at: str | None
    outcome: str
    error_text: str
    error: dict[str, Any] | None

    @classmethod
    def of(cls, attempt: AttemptRecord, push: PushRecord | None) -> PushFailure:
        return cls(
            email=attempt.email or (push.email if push else None),
            external_id=attempt.external_id,
            kind=push.kind if push else None,
            at=attempt.finished_at or attempt.started_at,
            outcome=attempt.outcome,
            error_text=error_summary(attempt.error) or "no error recorded",
            error=attempt.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_state_dir(paths: ConnectionPaths) -> Verdict:
    """The connection's state directory is a directory this user can write (made if missing)."""
    try:
        state = paths.ensure_state()
    except StsyncError as exc:
        return fail_with(exc)
    return ok(f"{state} is writable")


def open_ledger(paths: ConnectionPaths) -> tuple[Verdict | None, Ledger | None]:
    """The ledger when one exists (nothing to report); a FAIL when it cannot be opened."""
    if not paths.ledger.exists():
        return None, None
    try:
        ledger = Ledger.open(paths.ledger)
    except StsyncError as exc:
        return fail_with(exc), None
    try:
        ledger.check_integrity()
    except StsyncError as exc:
        ledger.close()
        return fail_with(exc), None
    return None, ledger


def check_run_locks(paths: ConnectionPaths, *, now: float | None = None) -> Verdict:
    """Who holds a job's lock now (another run of that job exits 7 meanwhile)."""
    now = time.time() if now is None else now
    held: list[str] = []
    stuck: list[tuple[RunJob, dict]] = []
    for job in LOCKED_JOBS:
        try:
            info = holder(paths, job)
        except OSError:
            info = None
        if not info:
            continue
        started = info.get("started_at")
        held.append(f"{job}: `{info.get('command')}` (pid {info.get('pid')}, since {started})")
        age = _age_seconds(started, now)
        if job not in LONG_RUNNING_JOBS and age is not None and age > LONG_RUN_SECONDS:
            stuck.append((job, info))
    if not held:
        return ok("no stsync run holds a lock")
    if stuck:
        job, info = stuck[0]
        return warn(
            "; ".join(held) + f". The {job} run has held its lock for more than {LONG_RUN_SECONDS // 3600} hours: "
            "other runs of it exit 7 meanwhile",
            f"if it is stuck, stop it (kill {info.get('pid')}): the lock goes away with the process and the next run resumes",
        )
    return ok("; ".join(held))


@dataclass(frozen=True)
class Recheck:
    """A failed run's cause, checked again now: the checks that verify it, by how they answered
    in this run (``checks.table.recheck``)."""

    passed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()  # e.g. the live checks under --offline

    @property
    def fixed(self) -> bool:
        return bool(self.passed) and not self.failed and not self.not_run


def check_last_run(
    ledger: Ledger | None, job: RunJob, *, recheck: Callable[[dict[str, Any]], Recheck | None] | None = None
) -> Verdict:
    """How the last run of ``job`` (push, sync, qualify) ended. A run stopped by a failure
    whose cause the checks can verify (``recheck``: credentials, the campaign, the mapping, the
    state directory, a remote that was down) is re-judged by them: the cause fixed, it passes
    with a note — it need not wait for the next run to clear."""
    command = JOB_COMMANDS[job]
    if ledger is None:
        return ok(f"`stsync {command}` has not run yet (no ledger yet)")
    run = ledger.last_run(job)
    if run is None:
        return ok(f"`stsync {command}` has not run yet")
    when = run.finished_at or run.started_at
    counts = _counts_text(run.counts)
    if run.outcome == RunOutcome.OK:
        return ok(f"ok at {when}{counts}")
    if run.outcome == RunOutcome.RUNNING:
        return ok(f"running since {run.started_at} (pid {run.pid}, `{run.command}`)")
    if run.outcome == RunOutcome.INTERRUPTED:
        return warn(
            f"`{run.command}` started {run.started_at} (pid {run.pid}) was interrupted before it finished{counts}",
            f"run `stsync {command}` again: it resumes where the ledger says it stopped",
        )
    error = f": {run.error}" if run.error else ""
    if run.outcome == RunOutcome.PARTIAL:
        return warn(
            f"partly failed at {when}{counts}{error}",
            "the failed records are listed by `stsync history --failed` (pushes) and below; fix them and run it again",
        )
    verdict = fail(
        f"failed at {when}{counts}{error}",
        f"fix the cause (the checks above say which), then run `stsync {command}` again",
        None,
    )
    answer = recheck(run.failure) if recheck is not None and run.failure else None
    if answer is None:
        return verdict
    if answer.fixed:
        return ok(
            f"failed at {when}{counts}{error}; its cause is fixed: re-checked now, {', '.join(answer.passed)} "
            f"pass{'es' if len(answer.passed) == 1 else ''} — the next `stsync {command}` should succeed"
        )
    if answer.failed:
        return fail(
            f"failed at {when}{counts}{error}; still failing now: {', '.join(answer.failed)}",
            f"fix {', '.join(answer.failed)} as its fix says, then run `stsync {command}` again",
            None,
        )
    return fail(
        f"failed at {when}{counts}{error}",
        f"fix the cause, then run `stsync {command}` again (`stsync diagnose` without --offline re-checks "
        f"{', '.join(answer.not_run)} live)",
        None,
    )


def check_holds(ledger: Ledger | None) -> Verdict:
    """Referrals whose job met the rule and that wait out ``hold_days`` (as ``qualify`` last
    decided): how many, and the one whose hold ends first."""
    if ledger is None:
        return ok("no referral held (no ledger yet)")
    held = ledger.held_pushes()
    if not held:
        return ok("no referral held")
    first = held[0]
    until = (first.held_until or "?")[:16].replace("T", " ")
    return ok(
        f"{len(held)} referral(s) held before qualifying; the first, {first.email or first.external_id}, "
        f"held until {until} UTC"
    )


def check_push_failures(ledger: Ledger | None) -> tuple[Verdict, list[PushFailure]]:
    """Pushes that failed and were never booked since: the lead's e-mail and the exact error."""
    if ledger is None:
        return ok("nothing pushed yet"), []
    latest: dict[str, AttemptRecord] = {}
    for attempt in ledger.recent_failures(limit=FAILURES_SCANNED):  # newest first: each lead's latest failure
        latest.setdefault(attempt.external_id, attempt)
    # A create in doubt is no failure: "Creates in doubt" tells it.
    latest = {key: attempt for key, attempt in latest.items() if attempt.outcome != AttemptOutcome.UNKNOWN}
    unresolved: list[PushFailure] = []
    resolved = silenced = 0
    acknowledged = ledger.acknowledgements(HistoryKind.PUSH)
    for external_id, attempt in latest.items():
        push = ledger.get_push(external_id)
        if push is not None and push.state == PushState.BOOKED:
            resolved += 1
            continue
        ack = acknowledged.get(external_id)
        if ack is not None and (attempt.finished_at or attempt.started_at) <= ack.acknowledged_at:
            silenced += 1  # a person has seen it (`history --ack`), and it has not failed again since
            continue
        unresolved.append(PushFailure.of(attempt, push))
    seen = f"; {silenced} acknowledged (`stsync history --kind push --failed` lists them)" if silenced else ""
    if not unresolved:
        earlier = f" ({resolved} earlier failure(s), each booked since)" if resolved else ""
        return ok(f"no unbooked push failure{earlier}{seen}"), []
    shown = unresolved[:FAILURES_SHOWN]
    lines = [f"{item.email or '(no e-mail)'} ({item.external_id}): {item.error_text}" for item in shown]
    more = f"; and {len(unresolved) - len(shown)} more" if len(unresolved) > len(shown) else ""
    first = shown[0]
    message = f"{len(unresolved)} referral(s) failed to book — " + " | ".join(lines) + more + seen
    fix = (
        "fix the cause ServiceTitan names, then push again: `stsync push-lead --new`, or one lead with "
        f"`stsync push-lead --code {first.external_id}`; `stsync diagnose --email {first.email or '<e-mail>'}` "
        "tells one referral's whole story; a record that will never book (a test lead) can be acknowledged: "
        "`stsync history --ack <id>` (ids: `stsync history --kind push --failed`)"
    )
    return fail(message, fix, None), unresolved


def check_creates_in_doubt(ledger: Ledger | None) -> Verdict:
    """Bookings and referrers whose create's answer was lost and which are not found yet:
    nothing to fix, the next run settles them — unless they stay that way."""
    if ledger is None:
        return ok("nothing created yet")
    bookings = ledger.unknown_attempts(limit=FAILURES_SCANNED)
    booking_ids = list(dict.fromkeys(attempt.external_id for attempt in bookings))
    referrers = [r for r in ledger.referrers_to_retry() if r.state == ReferrerState.UNKNOWN]
    if not booking_ids and not referrers:
        return ok("no create in doubt")
    parts = []
    if booking_ids:
        shown = ", ".join(booking_ids[:FAILURES_SHOWN]) + (" …" if len(booking_ids) > FAILURES_SHOWN else "")
        parts.append(f"{len(booking_ids)} booking(s) (externalId {shown})")
    if referrers:
        more = " …" if len(referrers) > FAILURES_SHOWN else ""
        shown = ", ".join(str(r.customer_id) for r in referrers[:FAILURES_SHOWN]) + more
        parts.append(f"{len(referrers)} referrer(s) of customers {shown}")
    return warn(
        " and ".join(parts) + f": {UNKNOWN_LABEL} (the answer to the create was lost and the record is not listed yet)",
        "nothing to fix: the next `stsync push-lead --new` / `stsync sync-customers` looks each up first and creates it "
        "only if it is still absent a grace period later ([limits] lookup_grace_seconds); if one stays unknown for "
        "long, `stsync diagnose --email <e-mail>` tells its story",
    )


def check_custom_field_refusals(ledger: Ledger | None) -> Verdict:
    """Customers whose return fields ServiceTitan refuses because of the customer's own
    custom field (``CustomFieldRefused``): left alone until fixed in ServiceTitan."""
    if ledger is None:
        return ok("no customer synced yet")
    refused = ledger.referrers_with_error("CustomFieldRefused")
    if not refused:
        return ok("no customer's own custom field blocks its return fields")
    lines = []
    for record in refused[:FAILURES_SHOWN]:
        fields = (record.error or {}).get("fields") or []
        what = "; ".join(
            f"{item.get('name') or 'type ' + str(item.get('type_id'))} = {item.get('value')!r} ({item.get('problem')})"
            for item in fields
        ) or error_summary(record.error)
        lines.append(f"customer {record.customer_id}: {what}")
    more = f"; and {len(refused) - FAILURES_SHOWN} more" if len(refused) > FAILURES_SHOWN else ""
    return warn(
        f"{len(refused)} customer(s) cannot get their referral link and code because ServiceTitan refuses a value "
        "of their own — " + " | ".join(lines) + more,
        "fix each field in ServiceTitan (pick a current option, a number, or clear it), then run "
        "`stsync sync-customers --retry-failed`; until a customer changes, the sync leaves it alone",
    )


def _age_seconds(started: Any, now: float) -> float | None:
    if not isinstance(started, str):
        return None
    try:
        moment = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return now - moment.timestamp()


def _counts_text(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return ""
    # Zeros say nothing ("failed 0, skipped 0, ..."): only what happened is shown.
    shown = ", ".join(
        f"{key} {value}" for key, value in counts.items() if not isinstance(value, (dict, list)) and value not in (0, None)
    )
    return f" ({shown})" if shown else ""


def check_referral_factory_throttle(
    paths: ConnectionPaths, *, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time
) -> Verdict:
    """Referral Factory's 429 episodes and cool-down, shared by every process of the connection
    (``stsync.ratelimit``): an IP block in force FAILs (exit 6), a cool-down or a halved rate
    WARNs, and otherwise it passes."""
    state_file = paths.rate_file("referral_factory")
    wall_now = wall_clock()
    state = read_state(state_file, window=60.0, clock=clock, wall_clock=lambda: wall_now)
    if state is None:
        return ok("no Referral Factory rate limiting recorded for this connection")
    cool_down = state.cool_down
    removal = f"if Referral Factory's support confirms it is over, delete {state_file} and run again"
    if cool_down is not None and cool_down.in_force(wall_now):
        until = local_and_utc(cool_down.until)
        if cool_down.reason == IP_BLOCKED:
            return fail(
                f"Referral Factory blocked this machine's IP address at {local_and_utc(cool_down.since)}: every "
                f"stsync process of this connection stops calling it until {until} (runs exit 6 until then)",
                f"wait until {until}; make sure no other tool on this machine or account abuses Referral Factory's "
                f"rate limit; {removal}",
                exit_code=6,
            )
        return warn(
            f"Referral Factory refused requests with HTTP 429 twice within an hour (last at "
            f"{local_and_utc(cool_down.since)}): every stsync process of this connection stops calling it until "
            f"{until} (runs exit 6 until then)",
            f"wait until {until}; if another tool uses the same Referral Factory account, lower "
            "[limits] referral_factory_per_minute",
        )
    if state.episodes or state.rate_factor < 1.0:
        at = ", ".join(local_and_utc(t) for t in state.episodes)
        episodes = f"HTTP 429 at {at}; " if at else ""
        until = f" until {local_and_utc(state.reduced_until)}" if state.reduced_until is not None else ""
        return warn(
            f"Referral Factory rate-limited this connection: {episodes}every process runs at "
            f"{state.rate_factor:.0%} of [limits] referral_factory_per_minute{until}; a second episode within the "
            "hour stops them all for an hour",
            "nothing to do if it does not come back; if it does, another tool probably shares the Referral Factory "
            "account: lower [limits] referral_factory_per_minute",
        )
    if cool_down is not None:
        what = "an IP block" if cool_down.reason == IP_BLOCKED else "a rate-limit cool-down"
        return ok(f"full speed; the last cool-down ({what}) ended {local_and_utc(cool_down.until)}")
    return ok("full speed; no HTTP 429 from Referral Factory in the last hour")
