"""The one check engine behind ``stsync connect``, ``validate`` and ``diagnose``.

- ``result``: what a check says (``Check``: PASS / WARN / FAIL, what it found, the fix, the
  exit-code class of a failure) and ``NotRun`` (a check that did not run, and why).
- ``offline``: checks of the config and of which secrets exist (never their values).
- ``activity``: checks of the ledger and the run locks (who runs, how the last runs ended,
  which pushes failed and were never booked since).
- ``live``: each live verification, written once: the ServiceTitan token, app key and tenant,
  the Booking Provider Value, the return-field custom fields, the Referral Factory key and the
  campaign. Each returns what it found or raises the failure in its final words, so ``connect``
  can stop at the first one while ``validate`` and ``diagnose`` put it in their table.
- ``context``: the per-run context (paths, the loaded config, the remote clients, what the
  checks learn on the way) — nothing is cached between runs.
- ``runner``: ``CheckSpec`` (name, category, what it needs first, how it runs), ``CheckRun``
  (runs specs in order and skips the dependants of a failed check, naming the blocker) and
  ``exit_code_for``, the one exit-code rule.
- ``table``: every check as a ``CheckSpec``, and the plans each command runs.

A check never raises for the condition it checks; only a bug escapes. No check puts a secret
value in what it reports.
"""
