"""What ``map show`` renders (and prints with ``--json``), and what ``validate`` and
``diagnose`` say about a section: the setup guide's Step 5 table, in its words.

- ``mapping_overview(config, sections=)``: per section ("leads", "referrers", "customers"),
  a JSON-ready dict. Booking sections: ``action`` (+ label), ``setup_required``, ``missing``,
  ``fields`` (``MappingRow.to_dict()`` rows), and for leads the ``qualification`` rule with
  its Step 6 label. Customers: ``mode``, ``include_inactive``, ``fields``, ``missing``,
  ``return_fields``. ValueError for an unknown section name.
- ``booking_rows(section)``: required targets first (SPEC order, unmapped ones included as
  rows without a spec), then the mapped optional ones, then targets the vocabulary does not
  know (validate names those).
- ``section_status(section)``: action, missing required targets, entries that cannot work
  (``validation.booking_mapping_problems``: a hand-edited value the target does not take),
  Setup Required or not — either kind stops every booking, so ``map show`` shows both in its banner, in
  ``validate``'s words (``problems`` in the JSON, with each key path and hint).

Pure: it describes what the config says, whether or not the mapping is valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stsync.errors import ConfigError
from stsync.leads import LEAD_FIELD_LABELS, META_PREFIX
from stsync.mapping.validation import booking_mapping_problems, customer_mapping_problems, missing_required
from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS, CUSTOM_PREFIX, REQUIRED_REFERRER_TARGETS
from stsync.servicetitan.vocabulary import BOOKING_TARGETS, REQUIRED_BOOKING_TARGETS
from stsync.storage.config import (
    BookingSettings,
    Config,
    FieldSpec,
    FromField,
    LeadSettings,
    SelectValue,
    TemplateValue,
)
from stsync.vocabulary import Action, QualificationRule, ReturnValue


@dataclass(frozen=True)
class MappingRow:
    """One row of the setup guide's Step 5 table."""

    target: str
    target_label: str
    required: bool
    data_type: str | None  # None: required but unmapped
    source: str | None  # what the "From Referral Factory" column shows
    spec: dict[str, Any] | None  # the TOML form, for --json

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_label": self.target_label,
            "required": self.required,
            "data_type": self.data_type,
            "from": self.source,
            "spec": self.spec,
            "mapped": self.spec is not None,
        }


def describe_source(spec: FieldSpec) -> str:
    """The "From Referral Factory" column: ``Campaign Name``, ``"Referral"``, ``"Yes"``, a template."""
    if isinstance(spec, FromField):
        name = spec.from_
        if name.startswith(META_PREFIX):
            return f"{name[len(META_PREFIX):]} (form field)"
        return LEAD_FIELD_LABELS.get(name, name)
    if isinstance(spec, SelectValue):
        return f'"{spec.select[:1].upper()}{spec.select[1:]}"'
    if isinstance(spec, TemplateValue):
        return spec.template
    payload = spec.value
    if isinstance(payload, bool):
        payload = "yes" if payload else "no"
    return f'"{payload}"'


def booking_rows(section: BookingSettings) -> list[MappingRow]:
    """Required targets first (SPEC order, unmapped ones included), then the mapped optional ones."""
    fields = section.fields
    rows: list[MappingRow] = []
    ordered = list(REQUIRED_BOOKING_TARGETS) + [t for t in BOOKING_TARGETS if t not in REQUIRED_BOOKING_TARGETS]
    ordered += [t for t in fields if t not in BOOKING_TARGETS]  # unknown targets still show (validate names them)
    for target in ordered:
        required = target in REQUIRED_BOOKING_TARGETS
        spec = fields.get(target)
        if spec is None and not required:
            continue
        label = BOOKING_TARGET_LABELS.get(target, target)
        if spec is None:
            rows.append(MappingRow(target, label, True, None, None, None))
            continue
        rows.append(MappingRow(target, label, required, spec.label, describe_source(spec), spec.to_toml()))
    return rows


CUSTOMER_SOURCE_LABELS = {
    "customer.id": "Customer ID",
    "customer.name": "Customer Name",
    "customer.first_name": "First Name (from the customer name)",
    "customer.last_name": "Last Name (from the customer name)",
    "customer.type": "Customer Type",
    "contact.email": "Email (first valid contact)",
    "contact.phone": "Phone (first phone contact)",
}


def describe_customer_source(spec: FieldSpec) -> str:
    """The "From ServiceTitan" column: ``Customer ID``, ``Gate Code (custom field)``, a template."""
    if isinstance(spec, FromField):
        name = spec.from_
        if name.startswith(CUSTOM_PREFIX):
            return f"{name[len(CUSTOM_PREFIX):]} (custom field)"
        if name.startswith("address."):
            return "Address: " + name.split(".", 1)[1].capitalize()
        return CUSTOMER_SOURCE_LABELS.get(name, name)
    return describe_source(spec)


def referrer_target_label(target: str) -> str:
    if target.startswith(META_PREFIX):
        return f"{target[len(META_PREFIX):]} (form field)"
    return {"first_name": "First Name", "email": "Email"}.get(target, target)


@dataclass
class SectionStatus:
    """What ``map show`` and ``validate`` say about one booking section: the required targets
    it leaves unmapped, and the entries that cannot work (a hand-edited value the target does
    not take, an unknown field): either stops every booking — the seed's Setup Required."""

    section: str
    action: str
    missing: list[str] = field(default_factory=list)
    problems: list[ConfigError] = field(default_factory=list)

    @property
    def setup_required(self) -> bool:
        return self.action == Action.CREATE_BOOKING and bool(self.missing or self.problems)


def section_status(section: BookingSettings) -> SectionStatus:
    return SectionStatus(
        section=section.section_name,
        action=section.action,
        missing=missing_required(section),
        problems=booking_mapping_problems(section),
    )


def problem_dict(problem: ConfigError) -> dict[str, Any]:
    """A mapping entry that cannot work, as ``map show --json`` lists it (validate's words)."""
    return {"key_path": problem.key_path, "message": str(problem), "hint": problem.hint}


# The seed's words for each action and return value.
ACTION_LABELS: dict[str, str] = {
    Action.CREATE_BOOKING: "Create New Booking In Service Titan",
    Action.NOTHING: "Nothing to action",
}
RETURN_VALUE_LABELS = {ReturnValue.REFERRAL_LINK: "Referral Link", ReturnValue.REFERRAL_CODE: "Referral Code"}


def qualification_label(rule: str, job_status: str | None) -> str:
    """The setup guide's Step 6 wording of a rule."""
    if rule == QualificationRule.JOB_CREATED:
        return "Booking becomes a job"
    if rule == QualificationRule.JOB_STATUS:
        return f"Booking becomes a job and reached status {job_status}"
    return "Do not qualify my referrals"


def hold_label(hold_days: int) -> str:
    """How a hold reads beside the rule."""
    if not hold_days:
        return "qualified as soon as the rule is met"
    return f"held {hold_days} day{'s' if hold_days != 1 else ''} without a cancellation before qualifying"


def mapping_overview(config: Config, *, sections: Iterable[str] = ("leads", "referrers", "customers")) -> dict[str, Any]:
    """What ``map show`` renders (and prints with ``--json``): per section, the action, the
    Step 5 table rows, the Setup Required state; for customers the fields and return fields."""
    overview: dict[str, Any] = {}
    for name in sections:
        if name in ("leads", "referrers"):
            section = config.leads if name == "leads" else config.referrers
            status = section_status(section)
            entry: dict[str, Any] = {
                "action": status.action,
                "action_label": ACTION_LABELS.get(status.action, status.action),
                "setup_required": status.setup_required,
                "missing": status.missing,
                "problems": [problem_dict(problem) for problem in status.problems],
                "fields": [row.to_dict() for row in booking_rows(section)],
            }
            if isinstance(section, LeadSettings):
                q = section.qualification
                entry["qualification"] = {
                    "rule": q.rule,
                    "job_status": q.job_status,
                    "unqualify_on": list(q.unqualify_on),
                    "hold_days": q.hold_days,
                    "label": qualification_label(q.rule, q.job_status),
                    "hold_label": hold_label(q.hold_days),
                }
            overview[name] = entry
        elif name == "customers":
            sync = config.customer_sync
            rows = []
            for target, spec in sync.fields.items():
                rows.append(
                    {
                        "target": target,
                        "target_label": referrer_target_label(target),
                        "required": target in REQUIRED_REFERRER_TARGETS,
                        "data_type": spec.label,
                        "from": describe_customer_source(spec),
                        "spec": spec.to_toml(),
                        "mapped": True,
                    }
                )
            for target in REQUIRED_REFERRER_TARGETS:
                if target not in sync.fields:
                    rows.append(
                        {"target": target, "target_label": referrer_target_label(target), "required": True,
                         "data_type": None, "from": None, "spec": None, "mapped": False}
                    )
            missing = [t for t in REQUIRED_REFERRER_TARGETS if t not in sync.fields]
            unmapped = {f"customer_sync.fields.{target}" for target in missing}
            overview["customers"] = {
                "mode": sync.mode,
                "include_inactive": sync.include_inactive,
                "fields": rows,
                "missing": missing,
                "problems": [
                    problem_dict(problem)
                    for problem in customer_mapping_problems(sync)
                    if problem.key_path not in unmapped
                ],
                "return_fields": [
                    {"custom_field": field_name, "value": value, "value_label": RETURN_VALUE_LABELS.get(value, value)}
                    for field_name, value in sync.return_fields.items()
                ],
            }
        else:
            raise ValueError(f"unknown section {name!r}")
    return overview
