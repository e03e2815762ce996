"""The mapping engine: a lead becomes a ServiceTitan booking, a ServiceTitan customer becomes
a Referral Factory referrer, and a referrer's link and code go back onto the customer.

Everything here is pure: no network, no printing, no files. It reads the config's sections
(``stsync.storage.config``: ``LeadSettings`` / ``ReferrerSettings``, ``CustomerSyncSettings``,
whose field specs carry their own kind, payload and template parser) and serves ``push``,
``sync``, ``serve``, ``validate``, ``map`` and ``diagnose`` alike.

Modules, each one job:
- ``vocabulary``    what a mapping may name: booking targets and their labels, customer
                    sources, referrer targets, return values.
- ``values``        a raw value → what a booking target takes (text, yes/no, an option, an
                    ID, a UTC date-time), or why it cannot.
- ``validation``    whether a mapping can work: ``ConfigError`` with key path and suggestion,
                    the missing required targets (the seed's "Setup Required").
- ``booking``       lead → ``CreateBookingRequest`` body and its externalId.
- ``referrers``     ServiceTitan customer → Referral Factory ``POST /users`` body, or a skip.
- ``return_fields`` a referrer's link/code → the customer's custom-field ``PATCH`` body.
- ``overview``      what ``map show`` renders (and ``--json`` prints).

Errors, everywhere in the package:
- ``SetupRequired`` (exit 3): a required booking target has no mapping, so no booking can be
  built for anyone.
- ``ConfigError`` (exit 3): the mapping refers to something that does not exist (a target, a
  source field, an option, a custom field).
- ``InvalidRecord`` (exit 5): this one lead's data cannot make a valid request. Raised before
  anything is sent, naming the lead and the field: a malformed request never leaves stsync.
"""
