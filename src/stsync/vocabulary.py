"""stsync's own closed vocabularies — the words of the config and of a run — defined once.

Each closed set is a ``StrEnum``: a member *is* its string (``Action.NOTHING == "nothing"``,
``f"{Action.NOTHING}"`` is ``nothing``, JSON, TOML and SQLite store ``"nothing"``), so the
config file, the ledger and every JSON output keep exactly the strings they always had, and a
plain string read back from any of them compares equal to its member.

ServiceTitan's vocabularies (job and booking statuses, contact types) are in
``servicetitan/vocabulary.py``; the ledger's states are in ``storage/states.py``.

Leaf module: the standard library only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Environment(StrEnum):
    """``servicetitan.environment``: which ServiceTitan the credentials belong to."""

    PRODUCTION = "production"
    INTEGRATION = "integration"

    @property
    def other(self) -> Environment:
        """The environment whose credentials a mix-up would be made for."""
        return Environment.INTEGRATION if self is Environment.PRODUCTION else Environment.PRODUCTION


class SecretsStore(StrEnum):
    """``secrets.store`` / ``connect --secrets-store``: where ``connect`` keeps the secrets."""

    KEYRING = "keyring"  # the OS keyring (the default)
    FILE = "file"  # a 0600 file in the connection's state directory (opt-in)


class Action(StrEnum):
    """``leads.action`` / ``referrers.action``: what happens when someone joins the campaign."""

    CREATE_BOOKING = "create_booking"  # the seed's "Create New Booking In Service Titan"
    NOTHING = "nothing"  # the seed's "Nothing to action"


class QualificationRule(StrEnum):
    """``leads.qualification.rule``: when a referral counts as qualified."""

    NONE = "none"  # "Do not qualify my referrals"
    JOB_CREATED = "job_created"  # the booking became a job
    JOB_STATUS = "job_status"  # that job reached ``job_status``


class UnqualifyEvent(StrEnum):
    """``leads.qualification.unqualify_on``: what takes a qualification back."""

    JOB_CANCELED = "job_canceled"
    BOOKING_DISMISSED = "booking_dismissed"


# `rule = "job_status"` without a status means the seed's example: the job reached Completed
# (one of servicetitan.vocabulary.JOB_STATUSES).
DEFAULT_JOB_STATUS: Final = "Completed"


class SyncMode(StrEnum):
    """``customer_sync.mode``: the seed's One-Time Sync or Ongoing Sync."""

    ONE_TIME = "one_time"
    ONGOING = "ongoing"


class RunMode(StrEnum):
    """How one ``sync-customers`` run reads the feeds (``--once`` / ``--ongoing``)."""

    ONCE = "once"  # every customer, from the start
    ONGOING = "ongoing"  # what changed since the last run


# The run a config mode asks for when the command line does not say.
RUN_MODE_FOR: Final = {SyncMode.ONE_TIME: RunMode.ONCE, SyncMode.ONGOING: RunMode.ONGOING}


class ReturnValue(StrEnum):
    """``customer_sync.return_fields`` values: what is written back to a ServiceTitan custom field."""

    REFERRAL_LINK = "referral_link"
    REFERRAL_CODE = "referral_code"


class LogFormat(StrEnum):
    """``logging.format`` / ``--log-format``: how log records are written."""

    TEXT = "text"  # one line for a person: time, pid, level, logger, message
    JSON = "json"  # one JSON object per line, for a log shipper


class Kind(StrEnum):
    """Whom a booking is for: a referred lead or a referrer (``pushes.kind``, ``push-lead --referrer``)."""

    LEAD = "lead"
    REFERRER = "referrer"


class Section(StrEnum):
    """A tab of the mapping (``map show --for``, ``map set --for``): the seed's Leads, Referrers
    and Customers tabs."""

    LEADS = "leads"
    REFERRERS = "referrers"
    CUSTOMERS = "customers"


class BookingSection(StrEnum):
    """The tabs whose members can become bookings (``map action``)."""

    LEADS = "leads"
    REFERRERS = "referrers"


class HistoryKind(StrEnum):
    """What ``stsync history --kind`` lists: each kind of record the ledger keeps."""

    PUSH = "push"  # booking attempts (push-lead, serve)
    QUALIFY = "qualify"  # qualifications and unqualifications sent to Referral Factory
    SYNC = "sync"  # customer sync outcomes: a customer became (or did not become) a referrer
    WEBHOOK = "webhook"  # webhook deliveries received by serve


class ReportGroup(StrEnum):
    """A row per what (``report --by``): the referrer who brought the referrals, or the month they joined."""

    REFERRER = "referrer"
    MONTH = "month"
