"""Alerts when a human must act: a JSON message to a webhook, and a dead-man's-switch ping.

    message    Alert (one thing to say) and the JSON body: a Slack/Teams ``text`` plus the
               structured ``stsync`` details (pure)
    send       Notifier: POSTs the message and the healthchecks.io-style pings, with short
               timeouts and a hard deadline; a failure is logged, never raised
    conditions what may need a human, read from the ledger: a job's exit code, records that
               failed for good, failed webhook deliveries, a job overdue, the Referral
               Factory cool-down (after an IP block or 429s)
    watch      the state machine over those conditions, kept in the ledger's kv (shared by
               cron runs, ``serve`` and ``stsync run``): a message once per change of state,
               a reminder after ``remind_after``, never every tick; one message per look

``services.job_outcome`` calls the watch when a run command ends (cron included); ``serve``
and ``stsync run`` call it periodically. The Referral Factory cool-down is read where
``stsync.ratelimit`` keeps it for every process of the connection: no call is needed to
report it.

Guarantees: sending never makes a job fail or wait longer than its deadline; no secret is in
a message (each body is redacted with every secret stsync knows, the alert URLs included); the
URLs themselves are never logged.
"""
