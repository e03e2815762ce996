"""ServiceTitan responses as stsync reads them (api/servicetitan.md §6; field names from
``specs/servicetitan/tenant-crm-v2.json`` and ``tenant-jpm-v2.json``).

Lenient on purpose: live responses carry fields the spec lacks (extra fields are ignored),
enums grow (statuses and types are plain strings, checked against
``stsync.servicetitan.vocabulary`` by whoever cares), and most fields the spec calls required
are optional here so that one surprising row does not sink a whole page. Attributes are
snake_case; the camelCase JSON names are aliases, and either may be used to build a model.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


def _as_utc(value: datetime) -> datetime:
    # ServiceTitan speaks UTC; a timestamp without an offset is UTC too. Aware everywhere,
    # so comparing a booking's modifiedOn with a stored checkpoint never raises.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class STModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)


class Address(STModel):
    street: str | None = None
    unit: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    # Customer addresses only; an address PATCH must send all eight parts.
    latitude: float | None = None
    longitude: float | None = None


class Booking(STModel):
    id: int
    source: str | None = None
    name: str | None = None
    status: str | None = None
    external_id: str | None = None
    booking_provider_id: int | None = None
    job_id: int | None = None
    dismissing_reason_id: int | None = None
    created_on: UtcDatetime | None = None
    modified_on: UtcDatetime | None = None
    start: UtcDatetime | None = None
    summary: str | None = None
    is_first_time_client: bool | None = None
    customer_type: str | None = None
    address: Address | None = None
    priority: str | None = None
    campaign_id: int | None = None
    business_unit_id: int | None = None
    job_type_id: int | None = None
    is_send_confirmation_email: bool | None = None

    @property
    def converted(self) -> bool:
        """A job was booked from it — whatever the status says (there is no "Pending")."""
        return self.job_id is not None


class CustomField(STModel):
    type_id: int
    name: str | None = None
    value: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _value_as_text(cls, value: object) -> object:
        # Custom-field values are strings in the spec; numbers have been seen in the wild.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value


class Customer(STModel):
    id: int
    name: str | None = None
    type: str | None = None
    active: bool = True
    merged_to_id: int | None = None
    address: Address | None = None
    custom_fields: list[CustomField] = Field(default_factory=list)
    created_on: UtcDatetime | None = None
    modified_on: UtcDatetime | None = None
    do_not_mail: bool | None = None
    do_not_service: bool | None = None
    balance: float | None = None
    tag_type_ids: list[int] = Field(default_factory=list)

    @field_validator("custom_fields", "tag_type_ids", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value

    @field_validator("type", mode="before")
    @classmethod
    def _type_name(cls, value: object) -> object:
        # The spec says a string; one hand-written sample shows {"name": "Residential"}.
        if isinstance(value, dict):
            return value.get("name") or value.get("value")
        return value

    def custom_field(self, name: str) -> CustomField | None:
        """The custom field called ``name`` (case-insensitively), if the customer has it."""
        wanted = name.casefold()
        for field in self.custom_fields:
            if field.name is not None and field.name.casefold() == wanted:
                return field
        return None


class CustomerContact(STModel):
    id: int
    customer_id: int | None = None
    type: str | None = None
    value: str | None = None
    memo: str | None = None
    active: bool = True
    modified_on: UtcDatetime | None = None
    created_on: UtcDatetime | None = None


class CustomFieldType(STModel):
    id: int
    name: str | None = None
    data_type: str | None = None
    data_type_options: list[str] = Field(default_factory=list)

    @field_validator("data_type_options", mode="before")
    @classmethod
    def _options(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, list):
            return [str(item) for item in value]
        return value


class Job(STModel):
    id: int
    job_number: str | None = None
    customer_id: int | None = None
    location_id: int | None = None
    job_status: str | None = None
    booking_id: int | None = None
    completed_on: UtcDatetime | None = None
    modified_on: UtcDatetime | None = None
    created_on: UtcDatetime | None = None
    # Revenue: the job's total (nullable; $0 jobs are common and legitimate, api/servicetitan.md
    # §11 "job revenue") and the invoice ServiceTitan opened with it.
    total: float | None = None
    invoice_id: int | None = None
    # Export rows only: false for a deleted job (api/servicetitan.md §7 "content").
    active: bool = True

    @field_validator("job_number", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class JobHistoryEntry(STModel):
    """One entry of a job's history: ``eventType`` names what happened ("Type of the job
    status" in the spec; the real wording is unconfirmed, see ``tracking.rule.event_status``)."""

    id: int | None = None
    event_type: str | None = None
    date: UtcDatetime | None = None
    employee_id: int | None = None


class JobHistory(STModel):
    """A row of ``export/job-history`` (every entry of one job, again whenever one is added),
    or the answer of ``GET jobs/{id}/history`` (no ``jobId`` there)."""

    job_id: int | None = None
    history: list[JobHistoryEntry] = Field(default_factory=list)
    active: bool = True

    @field_validator("history", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value


class BookingProviderTag(STModel):
    id: int
    tag_name: str | None = None
    description: str | None = None
    type: str | None = None
    active: bool = True
    created_on: UtcDatetime | None = None
    modified_on: UtcDatetime | None = None


RowT = TypeVar("RowT")


class ExportPage(STModel, Generic[RowT]):
    """One batch of an export feed. Persist ``continue_from`` after processing ``data``."""

    data: list[RowT] = Field(default_factory=list)
    continue_from: str | None = None
    has_more: bool = False

    @field_validator("data", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value
