"""What sync-customers should do to each customer, computed from the sandbox's own data —
independently of stsync's code — for the end-to-end and kill -9 tests.

The rules (SPEC §3, the seed's customer sync): a merged customer is skipped, then an
inactive one; a customer's e-mail is its first active, well-formed Email contact (by
contact id); none at all → ``no_email``, only malformed ones → ``invalid_email``. Customers
are enrolled in the export feed's order ``(modifiedOn, id)``: the first customer with an
e-mail gets the campaign user, a later one with the same e-mail (compared
case-insensitively) is ``shared`` (it carries that user's link and code, issue 14 item 6);
an e-mail already in the campaign is ``adopted``, else ``created``.

"Well-formed" is what Referral Factory accepts, read strictly (api/referral-factory.md §3;
issue 14 item 8): an ASCII dot-atom local part of at most 64 characters, one @, an ASCII
domain with a dot — written here from that rule, not taken from stsync.
"""

from __future__ import annotations

import re

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL = re.compile(rf"^(?={_ATOM}(?:\.{_ATOM})*@)[^@]{{1,64}}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{{2,}}$")
ENROLLED = ("created", "adopted")
# Not skips: a referrer of its own, or another customer's (same e-mail).
WITH_REFERRER = (*ENROLLED, "shared")


def expected_outcomes(sb, customer_ids: set[int] | None = None, *, taken: set[str] | None = None) -> dict[int, tuple[str, str | None]]:
    """customer id → (outcome, e-mail), for the customers as the feed serves them now.

    ``taken`` holds e-mails (casefolded) already enrolled by earlier runs; it is updated."""
    campaign = sb.credentials.campaign_id
    in_campaign = {u["email"].casefold() for u in sb.rf_users(campaign_id=campaign) if u.get("email")}
    taken = set() if taken is None else taken
    contacts: dict[int, list[dict]] = {}
    for contact in sb.contacts():
        contacts.setdefault(contact["customerId"], []).append(contact)
    outcomes: dict[int, tuple[str, str | None]] = {}
    for customer in sorted(sb.customers(), key=lambda c: (c["modifiedOn"], c["id"])):
        if customer_ids is not None and customer["id"] not in customer_ids:
            continue
        emails = sorted(
            (c for c in contacts.get(customer["id"], []) if c["type"] == "Email" and c["active"] and (c["value"] or "").strip()),
            key=lambda c: c["id"],
        )
        valid = [c["value"].strip() for c in emails if EMAIL.match(c["value"].strip())]
        email = None
        if customer.get("mergedToId") is not None:
            outcome = "merged"
        elif not customer["active"]:
            outcome = "inactive"
        elif not emails:
            outcome = "no_email"
        elif not valid:
            outcome = "invalid_email"
        else:
            email = valid[0]
            if email.casefold() in taken:
                outcome = "shared"
            else:
                outcome = "adopted" if email.casefold() in in_campaign else "created"
                taken.add(email.casefold())
        outcomes[customer["id"]] = (outcome, email)
    return outcomes


def tally(outcomes: dict[int, tuple[str, str | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome, _ in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def skips(counts: dict[str, int]) -> dict[str, int]:
    return {reason: n for reason, n in counts.items() if reason not in WITH_REFERRER}


def custom_values(customer: dict) -> dict:
    return {f["name"]: f["value"] for f in customer["customFields"]}
