"""The runner: checks declared as ``CheckSpec`` rows, run in order by ``CheckRun.run``, and the
one exit-code rule.

A spec says what it needs first: other checks (``needs``) and values it cannot run without
(``inputs``: a config key or a secret). ``CheckRun.run`` runs each spec of a plan unless

- a check it needs FAILed in this run → ``NotRun(reason=<that check's blocks>, blocked_by=<it>)``;
- a check it needs did not run → the same ``NotRun`` reason and blocker as that check;
- an input is missing → ``NotRun("missing: <inputs>", blocked_by=<the check that reports it>)``.

A need that is not part of the run is no condition: a plan that leaves a prerequisite out
(``connect`` skips the separate app-key and key checks) gets its failure from the dependant,
in the client's own words. With ``stop_at_first_failure`` the run raises the first failure's
error instead of going on; ``on_check`` hears of each check as it is made, the failing one
included, before that raise (``connect`` shows each ✓ as it happens, and asks again for the
value the failing check rejected).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from stsync.checks.context import CheckContext
from stsync.checks.result import Check, NotRun, Verdict


@dataclass(frozen=True)
class Input:
    """A value a check cannot run without, and the checks that report it missing (the first
    of them that ran in this run is named as the blocker)."""

    name: str
    present: Callable[[CheckContext], bool]
    reported_by: tuple[CheckSpec, ...]


@dataclass(frozen=True, eq=False)
class CheckSpec:
    """One row of the check table."""

    name: str
    category: str
    run: Callable[[CheckContext], Verdict | None]  # None: nothing to report (no row)
    needs: tuple[CheckSpec, ...] = ()
    inputs: tuple[Input, ...] = ()
    blocks: str = ""  # what this check's failure means for the checks that need it


class CheckRun:
    """The checks of one command, run in order against one context."""

    def __init__(self, context: CheckContext) -> None:
        self.context = context
        self.checks: list[Check] = []
        self.not_run: list[NotRun] = []

    def run(
        self,
        plan: Sequence[CheckSpec],
        *,
        stop_at_first_failure: bool = False,
        on_check: Callable[[Check], None] | None = None,
    ) -> CheckRun:
        for spec in plan:
            skipped = self._blocker(spec)
            if skipped is not None:
                self.not_run.append(skipped)
                continue
            verdict = spec.run(self.context)
            if verdict is None:
                continue
            check = Check.named(spec.name, spec.category, verdict)
            if on_check is not None:
                on_check(check)
            if check.failed and stop_at_first_failure:
                raise check.as_error()
            self.checks.append(check)
            self.context.results[spec.name] = check
        return self

    def skip(self, plan: Iterable[CheckSpec], reason: str) -> None:
        """Record a plan as not run for a reason of the command's own (``--offline``)."""
        self.not_run.extend(NotRun(spec.name, reason) for spec in plan)

    def check(self, spec: CheckSpec) -> Check | None:
        return next((check for check in self.checks if check.name == spec.name), None)

    def passed(self, spec: CheckSpec) -> bool:
        found = self.check(spec)
        return found is not None and not found.failed

    def failed(self, spec: CheckSpec) -> bool:
        found = self.check(spec)
        return found is not None and found.failed

    def _skipped(self, spec: CheckSpec) -> NotRun | None:
        return next((item for item in self.not_run if item.name == spec.name), None)

    def _blocker(self, spec: CheckSpec) -> NotRun | None:
        for need in spec.needs:
            if self.failed(need):
                return NotRun(spec.name, need.blocks, need.name)
            skipped = self._skipped(need)
            if skipped is not None:
                return NotRun(spec.name, skipped.reason, skipped.blocked_by)
        missing = [item for item in spec.inputs if not item.present(self.context)]
        if missing:
            reporter = next((r.name for r in missing[0].reported_by if self.check(r) is not None), None)
            return NotRun(spec.name, "missing: " + ", ".join(item.name for item in missing), reporter)
        return None


def exit_code_for(checks: Iterable[Check], not_run: Iterable[NotRun] = (), *, class_only_if_blocking: bool = False) -> int:
    """The one exit-code rule (SPEC §5).

    0 when nothing FAILs (warnings never fail). Otherwise the failures' class, the most
    pressing first: 4 (authentication) before 3 (configuration) before 6 (temporary); any
    other FAIL is 1.

    - ``validate`` uses it as it is: 4 if a credential or the booking provider was refused,
      else 3, else 6, else 1.
    - ``diagnose`` (``class_only_if_blocking``) keeps the class only when it is the whole
      story: every failure is of that one class, 3 or 4, and one of them kept another check
      from running ("3/4 where the failure is that class and nothing else ran"); otherwise 1.
    """
    failed = [check for check in checks if check.failed]
    if not failed:
        return 0
    classes = {check.exit_code or 1 for check in failed}
    code = next((candidate for candidate in (4, 3, 6) if candidate in classes), 1)
    if not class_only_if_blocking:
        return code
    blockers = {item.blocked_by for item in not_run if item.blocked_by}
    if classes == {code} and code in (3, 4) and any(check.name in blockers for check in failed):
        return code
    return 1
