"""The sandbox: a stateful, spec-strict simulator of ServiceTitan v2 and Referral Factory v2
over real local sockets, for end-to-end tests and ``stsync demo``.

It imports nothing from stsync outside this package: it shares the API contract
(``api/servicetitan.md``, ``api/referral-factory.md``, ServiceTitan's specs), never the
client code, so a bug in one cannot hide in the other.

    from stsync.sandbox import Sandbox, Faults

    with Sandbox(seed=1, customers=40, leads=8) as sb:
        sb.env()              # STSYNC_ST_AUTH_URL / STSYNC_ST_API_URL / STSYNC_RF_API_URL
        sb.credentials        # tenant, client id/secret, app key, booking provider, RF key, campaigns
        sb.convert_booking_to_job(booking_id)

Modules: ``simulator`` (``Sandbox``), ``servicetitan`` and ``referralfactory`` (state and
endpoints), ``schemas`` (request validation against ServiceTitan's specs), ``query``
(ServiceTitan's query parameters and paging), ``feeds`` (export order and continuation
tokens), ``problems`` (ApiErrorResponse), ``seed`` (deterministic data), ``faults``,
``limits`` (rate limits), ``server`` (HTTP plumbing), ``admin`` (``/_sandbox/`` routes and
``RemoteSandbox``), ``clock``.
"""

from __future__ import annotations

from stsync.sandbox.admin import RemoteSandbox, RemoteSandboxError
from stsync.sandbox.faults import Faults
from stsync.sandbox.server import RequestRecord
from stsync.sandbox.servicetitan import AdminError
from stsync.sandbox.simulator import Credentials, Sandbox

__all__ = ["AdminError", "Credentials", "Faults", "RemoteSandbox", "RemoteSandboxError", "RequestRecord", "Sandbox"]
