"""The referred leads stsync has seen, recorded where they are read — the first stage of the
report's funnel ("referred leads"), whether or not they were pushed yet, and who referred them.

``record_leads_seen(conn, leads, seen_by=…)`` writes one ledger row per lead
(``Ledger.record_referred_leads``: one statement per lead, one transaction for the batch,
nothing written for a lead already known as it is) and makes **no request**: it keeps what the
caller read anyway —

- the lead's externalId (the booking's join key, from the ``[leads]`` mapping; the lead's
  referral code when the mapping cannot make one, e.g. "Nothing to action" with an
  incomplete mapping), Referral Factory id, e-mail, first name and code;
- ``signed_up_at``, the day it joined the campaign (Referral Factory sends a date, or a date
  and time), as a UTC timestamp: the report places a referral in its period by it;
- its referrer: the Referral Factory user id (every user read from the API carries it), and
  the e-mail, first name and code when the caller read the referrer (webhooks and single
  pushes always do; ``push-lead --new`` only when the mapping uses ``referrer_*`` fields).

Callers: ``services.lead_sources`` (``push-lead --new``'s search: ``SEARCH``; single pushes:
``PUSH``) and ``webhooks.worker`` (``WEBHOOK``). Dry runs record nothing. A lead without
any key (no externalId and no referral code) is left out.

``read_referrer_details(conn)`` (``report --refresh`` only) names the referrers the ledger
knows by id alone: when some referred lead's referrer has neither e-mail nor name anywhere in
the ledger (not from its leads, not from customer sync, not pushed), the campaign's referrers
are read — one paged search (``POST /users/search``, type ``person_referring``, 250 a page),
stopped as soon as every one wanted was found, never a request per referrer — and their
e-mail, first name and code written onto the leads they brought.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from stsync.errors import StsyncError
from stsync.mapping.booking import external_id_for
from stsync.referralfactory.models import PERSON_REFERRING
from stsync.storage.ledger import ReferredLeadRow, iso_utc, utc_now
from stsync.storage.states import LeadSeenBy
from stsync.vocabulary import Kind

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.leads import Lead
    from stsync.storage.config import BookingSettings


def record_leads_seen(conn: Connection, leads: Iterable[Lead], *, seen_by: LeadSeenBy, durable: bool = True) -> int:
    """Remember these referred leads in the ledger (see the module docstring). → rows written.
    ``durable=False`` for a source the next run reads again whole (``Ledger.transaction``)."""
    section = conn.config.booking_section(Kind.LEAD)
    now = utc_now()
    rows = [row for lead in leads if (row := referred_lead_row(lead, section, seen_by=seen_by, now=now)) is not None]
    return conn.ledger.record_referred_leads(rows, durable=durable)


def referred_lead_row(lead: Lead, section: BookingSettings, *, seen_by: LeadSeenBy, now: str) -> ReferredLeadRow | None:
    """The ledger row of one lead seen now; None when it has no key at all."""
    try:
        external_id: str | None = external_id_for(lead, section)
    except StsyncError:
        external_id = lead.referral_code
    if not external_id:
        return None
    return ReferredLeadRow(
        external_id=external_id,
        rf_user_id=lead.rf_user_id,
        email=lead.email,
        name=lead.first_name,
        referral_code=lead.referral_code,
        signed_up_at=signed_up_at_utc(lead.signed_up_at),
        referrer_rf_user_id=lead.referrer_id,
        referrer_email=lead.referrer_email,
        referrer_name=lead.referrer_first_name,
        referrer_code=lead.referrer_code,
        seen_by=seen_by,
        first_seen_at=now,
    )


def signed_up_at_utc(text: str | None) -> str | None:
    """Referral Factory's ``signed_up_at`` (``2024-12-27``, ``2024-12-27 10:00:00``, ISO-8601
    with a zone) as the ledger stores times; a date is its midnight, a time without a zone UTC.
    None when absent or unreadable (the report then places the lead by when it was seen)."""
    if not text or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso_utc(moment)


def read_referrer_details(conn: Connection) -> tuple[int, int]:
    """Name the referrers known by id alone (see the module docstring). → (referrers wanted,
    referrers found)."""
    ledger = conn.ledger
    wanted = ledger.referrers_lacking_details()
    if not wanted:
        return 0, 0
    found: list[tuple[int, str | None, str | None, str | None]] = []
    remaining = set(wanted)
    for user in conn.referral_factory.search_users([("campaign_id", conn.campaign_id), ("type", PERSON_REFERRING)]):
        if user.id in remaining and user.type in (None, PERSON_REFERRING):
            found.append((user.id, user.email, user.first_name, user.code))
            remaining.discard(user.id)
            if not remaining:
                break  # no further page is needed
    ledger.fill_referrer_details(found)
    return len(wanted), len(found)
