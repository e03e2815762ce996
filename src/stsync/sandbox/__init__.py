"""The sandbox: a stateful, spec-strict simulator of ServiceTitan v2 and Referral Factory v2
over real local sockets, for end-to-end tests and ``stsync demo``.

It imports nothing from stsync outside this package: it shares the API contract
(``api/servicetitan.md``, ``api/referral-factory.md``, ServiceTitan's specs), never the
client code, so a bug in one cannot hide in the other.

    from stsync.sandbox import Sandbox, Faults

    with Sandbox(seed=1, customers=40, leads=8, bookings=0, variants=Variants()) as sb:
        sb.env()              # STSYNC_ST_AUTH_URL / STSYNC_ST_API_URL / STSYNC_RF_API_URL
        sb.credentials        # tenant, client id/secret, app key, booking provider, RF key, campaigns
        sb.convert_booking_to_job(booking_id)      # admin operations: also GET /_sandbox/
        sb.set_variants(Variants(rf_cursor_paging=True))   # another reading of the contract

Modules: ``simulator`` (``Sandbox``), ``servicetitan`` and ``referralfactory`` (state and
endpoints), ``schemas`` (request validation against ServiceTitan's specs), ``query``
(ServiceTitan's query parameters and paging), ``feeds`` (export order and continuation
tokens), ``problems`` (ApiErrorResponse), ``seed`` (deterministic data), ``faults``,
``limits`` (rate limits), ``server`` (HTTP plumbing), ``admin`` (``/_sandbox/`` routes and
``RemoteSandbox``), ``clock``, ``jpm`` (jobs, job history, cancellations), ``variants``
(readings of the contracts besides the default), ``errors`` (``AdminError``).
``docs/sandbox.md`` lists every option, variant and admin operation.
"""

from __future__ import annotations

from stsync.sandbox.admin import RemoteSandbox, RemoteSandboxError
from stsync.sandbox.errors import AdminError
from stsync.sandbox.faults import Faults
from stsync.sandbox.simulator import Sandbox
from stsync.sandbox.variants import Variants

__all__ = ["AdminError", "Faults", "RemoteSandbox", "RemoteSandboxError", "Sandbox", "Variants"]
