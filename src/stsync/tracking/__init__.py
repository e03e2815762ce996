"""What ServiceTitan did with the bookings stsync made: read incrementally into the ledger,
and judged against the qualification rule.

- ``tracking.reads``: the reads (bookings by watermark, the job and job-history export feeds,
  jobs by id) and when a read must be full;
- ``tracking.index``: the provider's externalIds for ``push-lead --new``;
- ``tracking.rule``: the rule and its hold, judged from what the ledger holds (no request).

Services use it (``services.qualify``, ``services.push``, ``services.referral_story``); it
uses the connection's ServiceTitan client and the ledger, and prints nothing.
"""
