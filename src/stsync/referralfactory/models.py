"""Referral Factory users and campaigns as stsync reads them (api/referral-factory.md §6, §8).

Lenient on purpose: the payloads are partly documented by third parties, so extra fields
are ignored, enums are plain strings, dates stay the strings Referral Factory sent
(``2024-12-27`` or a full timestamp), and ``meta`` is accepted as a list of
``{field, value}`` or as a ``{label: value}`` object.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class MetaField(RFModel):
    """One campaign form answer; ``field`` is the form field's label, e.g. "Last Name"."""

    field: str
    value: str | None = None

    @field_validator("field", "value", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _as_text(value)


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
            return [{"field": key, "value": item} for key, item in value.items()]
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict) and item.get("field") is not None]
        return value

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
