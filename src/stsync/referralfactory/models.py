"""Referral Factory users and campaigns as stsync reads them (api/referral-factory.md §6, §8).

Lenient on purpose: the payloads are partly documented by third parties, so extra fields
are ignored, enums are plain strings, dates stay the strings Referral Factory sent
(``2024-12-27`` or a full timestamp), and ``meta`` is accepted as a list of
``{field, value}`` or as a ``{label: value}`` object.

``meta[].value`` is typed *mixed* (dev: user-structure; api/referral-factory.md §11): a form
field may answer with a list or an object, not only text. No value makes a user — or the
page it came on — unreadable; each becomes text by ``meta_text``:

- text as is; a number as its decimal text; ``true``/``false``; null → no value;
- a list → its items as text, joined with ", " (``["Mon", "Wed"]`` → ``Mon, Wed``; null
  and blank items left out; an object item as JSON);
- an object → compact JSON with its keys in the order sent (``{"street": "1 Main"}`` →
  ``{"street":"1 Main"}``).

A ``meta`` item that is not ``{field, value}`` with a usable label is left out (logged at
debug), never a reason to refuse the user.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stsync.logs import get_logger

log = get_logger(__name__)

PERSON_REFERRING = "person_referring"  # a referrer
PERSON_INVITED = "person_invited"  # a referred lead


class RFModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


def meta_text(value: Any) -> str | None:
    """A ``meta[].value`` of any JSON type as text (see the module docstring); None for null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        parts = [meta_text(item) for item in value]
        return ", ".join(part for part in parts if part is not None and part.strip())
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


class MetaField(RFModel):
    """One campaign form answer; ``field`` is the form field's label, e.g. "Last Name"."""

    field: str
    value: str | None = None

    @field_validator("field", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("value", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return meta_text(value)


class User(RFModel):
    id: int
    campaign_id: int | None = None
    referrer_id: int | None = None
    first_name: str | None = None
    email: str | None = None
    code: str | None = None
    url: str | None = None
    type: str | None = None
    source: str | None = None
    signed_up_at: str | None = None
    qualified_at: str | None = None
    unsubscribed_at: str | None = None
    meta: list[MetaField] = Field(default_factory=list)

    @field_validator("signed_up_at", "qualified_at", "unsubscribed_at", "code", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("meta", mode="before")
    @classmethod
    def _meta(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, dict):
            value = [{"field": key, "value": item} for key, item in value.items()]
        if not isinstance(value, list):
            log.debug("meta of type %s ignored", type(value).__name__)
            return []
        usable = []
        for item in value:
            label = _as_text(item.get("field")) if isinstance(item, dict) else None
            if isinstance(label, str) and label.strip():
                usable.append({"field": label, "value": item.get("value")})
            else:
                log.debug("meta item without a usable label ignored")
        return usable

    def meta_value(self, label: str) -> str | None:
        """The answer to the form field ``label``; an exact match first, then case-insensitive."""
        for item in self.meta:
            if item.field == label:
                return item.value
        wanted = label.strip().casefold()
        for item in self.meta:
            if item.field.strip().casefold() == wanted:
                return item.value
        return None

    @property
    def is_lead(self) -> bool:
        return self.type == PERSON_INVITED

    @property
    def is_referrer(self) -> bool:
        return self.type == PERSON_REFERRING

    @property
    def qualified(self) -> bool:
        """``qualified_at`` null means "Pending" in Referral Factory's UI."""
        return bool(self.qualified_at)


class CampaignField(RFModel):
    id: int | str | None = None
    type: str | None = None
    label: str | None = None
    value: Any = None
    required: bool = False

    @field_validator("required", mode="before")
    @classmethod
    def _required(cls, value: Any) -> Any:
        return bool(value) if value is not None else False


class CampaignFields(RFModel):
    person_referring: list[CampaignField] = Field(default_factory=list)
    person_invited: list[CampaignField] = Field(default_factory=list)

    @field_validator("person_referring", "person_invited", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return value if isinstance(value, list) else []


class Campaign(RFModel):
    id: int
    code: str | None = None
    name: str | None = None
    status: str | None = None
    url: str | None = None
    starts_at: str | None = None
    ends_at: str | None = None
    fields: CampaignFields = Field(default_factory=CampaignFields)

    @field_validator("fields", mode="before")
    @classmethod
    def _fields(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {}

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, value: Any) -> Any:
        return _as_text(value)

    @property
    def launched(self) -> bool:
        return self.status == "launched"

    def field_labels(self, user_type: str) -> list[str]:
        """The form labels (``meta`` keys) of ``person_referring`` or ``person_invited`` users."""
        fields = self.fields.person_referring if user_type == PERSON_REFERRING else self.fields.person_invited
        return [f.label for f in fields if f.label]
