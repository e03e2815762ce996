"""Where push-lead's leads come from in Referral Factory, each read with its campaign and
its referrer (``leads.LeadReader``):

- ``fetch_lead``: one lead by referral code or user id (``push-lead --code`` /
  ``--rf-user-id``); a code or id that is not this campaign's is a ``UsageError``.
- ``iter_new_leads`` / ``new_leads``: the campaign's users of a kind with no booking in the
  ledger (``push-lead --new``), as Referral Factory's search pages come in / all at once;
  referrers are read only when the mapping uses their fields.
- ``complete_leads``: the campaign name that leads read from a file lack, when the mapping
  sends it.
- ``record_seen``: the referred leads of a single push (``--code``, ``--rf-user-id``,
  ``--file``, flags) into the ledger's ``referred_leads`` (``tracking.referrals``).

Every referred lead ``iter_new_leads`` reads is recorded there too (the report's "referred
leads", pushed or not, with their referrer) unless ``record=False`` (a dry run): a new lead
before it is handed out, the leads already booked with it or in batches of ``SEEN_BATCH`` (a
run stopped early records them next time; their pushes count in the report meanwhile). That
costs no request: only what the search returned is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from stsync.errors import InvalidRecord, ReferralFactoryApiError, UsageError
from stsync.leads import Lead, LeadReader
from stsync.mapping.booking import external_id_for, lead_fields_read
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.storage.states import LeadSeenBy, PushState
from stsync.tracking.referrals import record_leads_seen
from stsync.vocabulary import Kind

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.services.push import PushTarget

# The Referral Factory user type `push-lead --new` searches for each kind.
USER_TYPE_FOR_KIND = {Kind.LEAD: PERSON_INVITED, Kind.REFERRER: PERSON_REFERRING}
# Referred leads the search read, recorded as seen this many at a time (one transaction each).
SEEN_BATCH = 250


def fetch_lead(conn: Connection, *, code: str | None = None, rf_user_id: int | None = None) -> Lead:
    """A lead read from Referral Factory by code or user id, with its campaign and referrer."""
    if (code is None) == (rf_user_id is None):
        raise UsageError("give exactly one of --code or --rf-user-id")
    rf = conn.referral_factory
    campaign_id = conn.campaign_id
    if rf_user_id is None:
        assert code is not None  # exactly one of them, checked above
        user = rf.find_user_by_code(campaign_id, code)
        if user is None:
            raise UsageError(
                f"campaign {campaign_id} has no Referral Factory user with referral code {code!r}",
                hint="check the code (it is the last part of the lead's referral link)",
            )
    else:
        try:
            user = rf.get_user(rf_user_id)
        except ReferralFactoryApiError as exc:
            if exc.status == 404:
                raise UsageError(
                    f"Referral Factory has no user with id {rf_user_id}",
                    hint="check the id (Referral Factory → campaign → Participants), or push by --code",
                ) from None
            raise
        if user.campaign_id is not None and user.campaign_id != campaign_id:
            raise UsageError(
                f"Referral Factory user {rf_user_id} belongs to campaign {user.campaign_id}, "
                f"not to this connection's campaign {campaign_id}",
                hint="use --config for the connection of that campaign",
            )
    return LeadReader(conn.referral_factory, conn.campaign_id).lead(user)


def new_leads(conn: Connection, target: PushTarget, *, record: bool = True) -> list[Lead]:
    """``iter_new_leads``, all read before the list is returned."""
    return list(iter_new_leads(conn, target, record=record))


def iter_new_leads(conn: Connection, target: PushTarget, *, record: bool = True) -> Iterator[Lead]:
    """The campaign's users of the target's kind (``POST /users/search``, paged) with no
    booking in the ledger, each yielded as soon as its page is read. A user the mapping
    cannot give an externalId is kept: ``push_lead`` reports what is missing. Every referred
    lead read is recorded as seen (``record``; see the module docstring)."""
    kind, section = target.kind, target.section
    campaign_id = conn.campaign_id
    user_type = USER_TYPE_FOR_KIND[kind]
    wants_referrer = any(source.startswith("referrer_") for source in lead_fields_read(section))
    reader = LeadReader(conn.referral_factory, campaign_id, with_referrer=wants_referrer)
    reader.campaign()  # read before the search, as every lead needs it
    ledger = conn.ledger
    seen: set[str] = set()
    to_record: list[Lead] = []
    recording = record and kind == Kind.LEAD

    def record_seen_so_far() -> None:
        if to_record:
            # Not waited onto the disk: a power cut may lose it, and the next run's search reads
            # every lead again. A durable commit per new lead (this runs once per lead handed
            # out) held the ledger's writer lock from the workers' intents, a push's hot path.
            record_leads_seen(conn, to_record, seen_by=LeadSeenBy.SEARCH, durable=False)
            to_record.clear()

    for user in conn.referral_factory.search_users([("campaign_id", campaign_id), ("type", user_type)]):
        if user.type != user_type:
            continue  # the search filter is re-checked, as for campaign_id
        lead = reader.lead(user)
        if recording:
            to_record.append(lead)
        try:
            external_id = external_id_for(lead, section)
        except InvalidRecord:
            record_seen_so_far()
            yield lead
            continue
        if external_id in seen:
            continue  # a page boundary moved under us: the same user twice
        seen.add(external_id)
        known = ledger.get_push(external_id)
        if known is not None and known.state == PushState.BOOKED:
            if len(to_record) >= SEEN_BATCH:
                record_seen_so_far()
            continue
        # Recorded before it is handed out: a run that stops at this lead has still seen it.
        record_seen_so_far()
        yield lead
    record_seen_so_far()


def record_seen(conn: Connection, leads: Sequence[Lead], target: PushTarget) -> None:
    """Single pushes' referred leads as seen (``tracking.referrals``); referrers are not."""
    if target.kind == Kind.LEAD:
        record_leads_seen(conn, leads, seen_by=LeadSeenBy.PUSH)


def complete_leads(conn: Connection, leads: Sequence[Lead], target: PushTarget) -> list[Lead]:
    """Fill the campaign name of leads read from a file when the target's mapping needs it
    (each campaign read once)."""
    if "campaign_name" not in lead_fields_read(target.section):
        return list(leads)
    if all(lead.campaign_name for lead in leads):
        return list(leads)
    reader = LeadReader(conn.referral_factory, conn.campaign_id, with_referrer=False)
    completed = []
    for lead in leads:
        if not lead.campaign_name:
            campaign_id = lead.campaign_id if lead.campaign_id is not None else reader.campaign_id
            lead = replace(lead, campaign_name=reader.campaign(campaign_id).name, campaign_id=campaign_id)
        completed.append(lead)
    return completed
