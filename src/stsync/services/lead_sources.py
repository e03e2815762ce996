"""Where push-lead's leads come from in Referral Factory, each read with its campaign and
its referrer (``leads.LeadReader``):

- ``fetch_lead``: one lead by referral code or user id (``push-lead --code`` /
  ``--rf-user-id``); a code or id that is not this campaign's, or a user of the other kind (a
  referrer pushed as a lead, a lead pushed with ``--referrer``), is a ``UsageError``.
- ``own_leads``: of leads read from a file, those of this campaign and of the kind pushed;
  the others are refused one by one (``InvalidRecord``) in the same words.
- ``unread_values``: warnings for ``push-lead --phone`` / ``--field`` values that no mapping
  reads (they would not be sent).
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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from stsync.errors import InvalidRecord, ReferralFactoryApiError, UsageError
from stsync.leads import META_PREFIX, PHONE_META_LABEL, Lead, LeadReader
from stsync.mapping.booking import external_id_for, fields_not_read, lead_fields_read
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.storage.states import LeadSeenBy, PushState
from stsync.tracking.referrals import record_leads_seen
from stsync.vocabulary import Kind

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.referralfactory.models import Campaign
    from stsync.services.push import PushTarget

# The Referral Factory user type `push-lead --new` searches for each kind.
USER_TYPE_FOR_KIND = {Kind.LEAD: PERSON_INVITED, Kind.REFERRER: PERSON_REFERRING}
# Referred leads the search read, recorded as seen this many at a time (one transaction each).
SEEN_BATCH = 250


def fetch_lead(
    conn: Connection,
    *,
    code: str | None = None,
    rf_user_id: int | None = None,
    kind: Kind = Kind.LEAD,
    known: Campaign | None = None,
) -> Lead:
    """A lead read from Referral Factory by code or user id, with its campaign and referrer;
    ``kind``: what it is pushed as (a user of the other kind is refused); ``known``: the
    campaign, when the caller read it already."""
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
                hint=OTHER_CAMPAIGN_HINT,
            )
    who = f"Referral Factory user {user.id}" + (f" ({user.email})" if user.email else "")
    wrong_kind = _other_kind(who, user.type, kind)
    if wrong_kind is not None:
        message, hint = wrong_kind
        raise UsageError(message, hint=hint)
    return LeadReader(conn.referral_factory, conn.campaign_id, known=known).lead(user)


OTHER_CAMPAIGN_HINT = "use --config for the connection of that campaign"


def _other_kind(who: str, user_type: str | None, kind: Kind) -> tuple[str, str] | None:
    """(message, hint) when a user of ``user_type`` is pushed as ``kind`` but is the other kind."""
    if kind == Kind.LEAD and user_type == PERSON_REFERRING:
        return (
            f"{who} is a referrer ({PERSON_REFERRING}), not a referred lead: a lead's booking is not made for it",
            "to book referrers, push them with --referrer (the referrers' settings: `stsync map show --for referrers`)",
        )
    if kind == Kind.REFERRER and user_type == PERSON_INVITED:
        return (
            f"{who} is a referred lead ({PERSON_INVITED}), not a referrer",
            "push it without --referrer (the leads' settings)",
        )
    return None


def own_leads(conn: Connection, leads: Sequence[Lead], kind: Kind) -> tuple[list[Lead], list[tuple[Lead, InvalidRecord]]]:
    """Leads read from a file that are this campaign's and of ``kind`` (a lead naming no
    campaign or type is taken as such); the others refused, each with the reason."""
    campaign_id = conn.campaign_id
    kept: list[Lead] = []
    refused: list[tuple[Lead, InvalidRecord]] = []
    for lead in leads:
        if lead.campaign_id is not None and lead.campaign_id != campaign_id:
            refusal = InvalidRecord(
                f"{lead.describe()} belongs to campaign {lead.campaign_id}, not to this connection's "
                f"campaign {campaign_id}: it is not pushed under this campaign's name",
                record=lead.email or lead.referral_code,
                field="campaign_id",
                hint=OTHER_CAMPAIGN_HINT,
            )
            refused.append((lead, refusal))
            continue
        wrong_kind = _other_kind(lead.describe(), lead.type, kind)
        if wrong_kind is not None:
            message, hint = wrong_kind
            refusal = InvalidRecord(message, record=lead.email or lead.referral_code, field="type", hint=hint)
            refused.append((lead, refusal))
            continue
        kept.append(lead)
    return kept, refused


def unread_values(target: PushTarget, *, phone: str | None, fields: Mapping[str, str]) -> list[str]:
    """A warning for each ``--phone`` / ``--field`` value no mapping of the target reads: it
    would be dropped silently otherwise."""
    section = target.section
    given = {f"{META_PREFIX}{PHONE_META_LABEL}": "--phone"} if phone is not None and phone.strip() else {}
    given.update({name.strip(): f"--field {name.strip()}=…" for name in fields})
    warnings = []
    for name in fields_not_read(given, section):
        flag = given[name]
        example = (
            f'stsync map set phone --from "{name}"' if flag == "--phone" else f'stsync map set <field> --from "{name}"'
        )
        warnings.append(
            f"{flag}: no field of [{section.section_name}] is mapped from {name}, so the value is not sent "
            f"(map it: `{example}`{'' if target.kind == Kind.LEAD else ' --for referrers'})"
        )
    return warnings


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
    reader = LeadReader(conn.referral_factory, campaign_id, with_referrer=wants_referrer, known=target.campaign)
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
    reader = LeadReader(conn.referral_factory, conn.campaign_id, with_referrer=False, known=target.campaign)
    completed = []
    for lead in leads:
        if not lead.campaign_name:
            campaign_id = lead.campaign_id if lead.campaign_id is not None else reader.campaign_id
            lead = replace(lead, campaign_name=reader.campaign(campaign_id).name, campaign_id=campaign_id)
        completed.append(lead)
    return completed
