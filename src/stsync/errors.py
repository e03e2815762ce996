"""Every failure stsync reports, and the exit code it carries (SPEC §5).

    StsyncError                      1  unexpected; the trace goes to the log file
    ├── UsageError                   2  bad command line or input shape
    ├── ConfigError                  3  config or mapping invalid
    │   ├── SetupRequired            3  required booking fields unmapped (the seed's banner)
    │   ├── SecretStoreUnavailable   3  no usable secret store (headless cron)
    │   ├── ConnectionInUse          3  another config file already goes by this connection name
    │   ├── StateUnusable            3  this machine cannot keep the state: a file where a
    │   │                               directory should be, read-only, full disk
    │   └── LedgerDamaged            3  the ledger's file is damaged or misses a table
    ├── AuthError                    4  credentials, app key, tenant, booking provider, RF key
    ├── PartialFailure               5  some records failed; the rest is done and recorded
    ├── InvalidRecord                5  one record cannot be sent (a lead without e-mail, ...)
    ├── CustomFieldRefused           5  ServiceTitan refuses a customer's own custom-field value
    ├── TemporaryError               6  remote unavailable or rate-limited past the budget
    │   ├── RateLimited              6
    │   │   └── CoolingDown          6  the connection stopped calling a service until a time
    │   ├── IncompleteListing        6  a paged list that cannot be read to its end
    │   └── AnswerLost               6  a write whose answer never came (look it up first)
    ├── LockHeld                     7  another run of this connection holds the lock
    ├── CommandFailed             1/3/4/6  the command's own report says it failed (a check FAILed,
    │                                   a demo step): the exit code is the report's
    ├── NotConfirmed                 1  a person declined (or could not answer) a confirmation
    ├── Interrupted                130  Ctrl-C (SIGINT): what was done is recorded
    └── ApiError                     1  a remote API said no (status, title, per-field errors)
        ├── ServiceTitanApiError
        └── ReferralFactoryApiError
            ├── DuplicateEmail          the campaign already has this e-mail (adopt the user)
            └── NotFound                Referral Factory's own JSON 404 (a deletion only if
                                        the campaign read of the run succeeded)

What a failure means to a run over many records (push, sync-customers, qualify, serve) is
the error's too: ``stops_run(exc)``. Most failures stop the run — every record after them
would fail the same way (credentials, the configuration, a remote down past the retry
budget, a lock, a bug). Three are the record's own, recorded as its failure while the run
goes on: ``InvalidRecord`` (its data), ``ApiError`` (the remote refused its request) and
``AnswerLost`` (its write's answer never came: it is looked up before it is written
again). A caller may still decide that a record's failure repeated is the run's (push stops
when one booking's answer is lost five times in a row): it raises a run-level error.

Messages never contain secrets: callers pass ids and names, never keys or tokens.

Every error has one shape as data, ``to_dict()``: ``type``, ``message``, ``hint``, ``exit_code``
and the fields its class adds (an ``ApiError``'s remote fields, a ``ConfigError``'s
``key_path``, ``SetupRequired``'s ``section`` and ``missing``, an ``InvalidRecord``'s
``record`` and ``field``). ``--json`` prints it and the ledger stores it; ``error_summary``
turns a stored one back into a line for a person — rows written before ``to_dict()`` had
``type`` (an ``ApiError`` stored only its remote fields) read the same.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from stsync.credentials import env_var_names


class StsyncError(Exception):
    """Base class. ``hint`` is the one line telling the user what to do next.

    ``stops_run``: True when a run over many records must stop at this failure, False when
    only the record it happened to failed (see ``stops_run()`` and the module docstring).
    """

    exit_code: int = 1
    # The attributes a class adds to ``to_dict()``, after the common four.
    shape_fields: tuple[str, ...] = ()
    stops_run: bool = True

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as data: what ``--json`` prints and the ledger stores (no secret: messages hold none)."""
        shape: dict[str, Any] = {
            "type": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }
        for name in self.shape_fields:
            shape[name] = getattr(self, name)
        return shape


def stops_run(exc: BaseException) -> bool:
    """Must a run over many records stop at ``exc``? False: only the record it happened to
    failed — record it and go on. Anything that is not a ``StsyncError`` is a bug: it stops
    the run."""
    return exc.stops_run if isinstance(exc, StsyncError) else True


class UsageError(StsyncError):
    exit_code = 2


class ConfigError(StsyncError):
    """Config or mapping invalid. ``key_path`` names the offending key, e.g. ``leads.fields.name``."""

    exit_code = 3
    shape_fields: tuple[str, ...] = ("key_path",)

    def __init__(self, message: str, *, key_path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key_path = key_path


class SetupRequired(ConfigError):
    """The seed's "Setup Required": required booking targets without a mapping."""

    shape_fields: tuple[str, ...] = (*ConfigError.shape_fields, "section", "missing")

    def __init__(self, section: str, missing: list[str]) -> None:
        self.section = section
        self.missing = list(missing)
        names = ", ".join(missing)
        super().__init__(
            f"Setup Required: [{section}] has no mapping for required field(s): {names}",
            key_path=f"{section}.fields",
            hint=f"map each one, e.g. `stsync map set {missing[0]} --from <field> --for {section}`" if missing else None,
        )


class SecretStoreUnavailable(ConfigError):
    """No store has the secret and the keyring cannot be used. A *locked* keyring's fix is
    unlocking it, so that comes first; otherwise the three remedies of a headless box."""

    ENV_REMEDY = f"set the secrets as environment variables ({env_var_names()})"
    FILE_REMEDY = "opt in to the file store with `stsync connect --secrets-store file`"
    UNLOCK_REMEDY = (
        "unlock the keyring: on a desktop, log in or unlock the \"login\" keyring in Passwords and Keys; "
        "on a headless box, start the Secret Service unlocked in the D-Bus session stsync runs in: "
        "`echo -n PASSWORD | gnome-keyring-daemon --replace --unlock --components=secrets` (the keyring's password); "
        "on macOS, `security unlock-keychain`"
    )

    shape_fields: tuple[str, ...] = (*ConfigError.shape_fields, "locked")

    def __init__(self, detail: str, *, locked: bool = False) -> None:
        if locked:
            hint = f"1. {self.UNLOCK_REMEDY}; 2. or {self.ENV_REMEDY}; 3. or {self.FILE_REMEDY}"
        else:
            hint = (
                f"1. {self.ENV_REMEDY}; 2. unlock or install an OS keyring (a Secret Service such as "
                f"gnome-keyring, or choose a backend with PYTHON_KEYRING_BACKEND); 3. {self.FILE_REMEDY}"
            )
        super().__init__(f"No usable secret store: {detail}", hint=hint)
        self.locked = locked


class ConnectionInUse(ConfigError):
    """Two config files would share one connection's state and secrets: refused, both named."""

    shape_fields = (*ConfigError.shape_fields, "connection", "owner", "config")

    def __init__(self, connection: str, *, owner: str, config: str) -> None:
        self.connection = connection
        self.owner = owner
        self.config = config
        super().__init__(
            f"connection '{connection}' belongs to {owner}; {config} cannot be connection '{connection}' too "
            "(they would share secrets, ledger and state)",
            key_path="connection",
            hint=f"give this config a name of its own: `stsync --config {shlex.quote(config)} connect --connection NAME` "
            "(or rename the file, if it has no `connection = ...` line: it is then named after the file)",
        )


class StateUnusable(ConfigError):
    """A file or directory of the connection's state cannot be used on this machine: a file
    where a directory should be, no permission, a read-only file system, a full disk.

    Nothing is wrong with the config or either service: the fix is on this machine, so the
    message names the path and the reason, and the hint the way out (``STSYNC_STATE_DIR``
    moves the whole state elsewhere). ``reason`` is a short key: ``not_a_directory``,
    ``permission``, ``read_only``, ``disk_full`` or ``os_error``."""

    shape_fields = (*ConfigError.shape_fields, "path", "reason")

    def __init__(self, message: str, *, path: str, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.reason = reason


class LedgerDamaged(ConfigError):
    """The ledger file is not a database any more, has damaged pages, or misses a table it
    must have. Moving it aside is safe: a new ledger is started, and every push looks a
    booking up by its External Id in ServiceTitan before creating it, so nothing is booked
    twice — only the history is gone."""

    shape_fields = (*ConfigError.shape_fields, "path")

    def __init__(self, message: str, *, path: str, hint: str | None = None) -> None:
        moved = f"{path}.damaged"
        super().__init__(
            message,
            hint=hint
            or f"move it aside (`mv {path} {moved}`; its -wal and -shm files too, if any): the next command "
            "starts a new ledger, and pushes look each booking up in ServiceTitan first, so nothing is booked "
            f"twice (the history is lost; `sqlite3 {moved} .recover` may save some of it)",
        )
        self.path = path


class AuthError(StsyncError):
    exit_code = 4


class PartialFailure(StsyncError):
    exit_code = 5


class InvalidRecord(StsyncError):
    """One record's data cannot make a valid request (a lead with no e-mail, a bad value).

    Raised before anything is sent. In a batch the record is recorded as failed and the
    run goes on (exit 5); alone it fails the command with exit 5 too: the input was read,
    this record is what failed.
    """

    exit_code = 5
    shape_fields: tuple[str, ...] = ("record", "field")
    stops_run = False

    def __init__(self, message: str, *, record: str | None = None, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.record = record
        self.field = field


class CustomFieldRefused(StsyncError):
    """ServiceTitan refused a customer's custom-field PATCH because of a value of the
    customer's own (a retired Dropdown option, a non-numeric Numeric value, a field the tenant
    no longer lists), which stsync sends back unchanged so as not to erase it.

    Only a person can fix it, in ServiceTitan. The customer is not tried again until it
    changes there (its ``modifiedOn`` moves, recorded as ``customer_modified_on``) or
    ``stsync sync-customers --retry-failed`` asks. ``fields``: ``RefusedField.to_dict()`` each.
    """

    exit_code = 5
    shape_fields = ("customer_id", "fields", "customer_modified_on", "status", "errors", "trace_id")
    stops_run = False

    def __init__(
        self,
        message: str,
        *,
        customer_id: int,
        fields: list[dict[str, Any]],
        customer_modified_on: str | None,
        status: int | None = None,
        errors: dict[str, list[str]] | None = None,
        trace_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.customer_id = customer_id
        self.fields = fields
        self.customer_modified_on = customer_modified_on
        self.status = status
        self.errors = errors or {}
        self.trace_id = trace_id


class TemporaryError(StsyncError):
    exit_code = 6


class RateLimited(TemporaryError):
    pass


class CoolingDown(RateLimited):
    """Every process of the connection has stopped calling a service until ``safe_after``
    (UTC, ISO 8601): it refused too often (HTTP 429) or blocked this machine's IP address.
    ``reason`` is ``rate_limited`` or ``ip_blocked``. The message says the time in local time
    and in UTC."""

    shape_fields = ("service", "reason", "safe_after")

    def __init__(self, message: str, *, service: str, reason: str, safe_after: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.service = service
        self.reason = reason
        self.safe_after = safe_after


class IncompleteListing(TemporaryError):
    """A paged list stopped before its end (the server repeated a page, ignored the page
    asked for, or pointed elsewhere): what was read is not everything, so the run stops
    rather than act on a part of it as if it were the whole."""


class AnswerLost(TemporaryError):
    """A write was sent but no answer came back (timeout, connection reset, 5xx).

    The remote side may have committed it: the caller must look the record up before
    writing again. The record's failure, not the run's: the remote answered others.
    """

    stops_run = False


class LockHeld(StsyncError):
    """Another run of the job holds its lock. ``holder``: what that run wrote about itself
    (pid, command, started_at, host), or None when it could not be read."""

    exit_code = 7

    def __init__(self, message: str, *, hint: str | None = None, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder


class CommandFailed(StsyncError):
    """The command ran to its end and its own report says it failed: ``validate`` or
    ``diagnose`` found a FAIL, a ``demo`` step exited non-zero. The report (its table, its
    ``--json`` keys) has the details; this carries the exit code the report chose (SPEC §5:
    1, or 3/4/6 for a failure of that class), set per instance."""

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


class NotConfirmed(StsyncError):
    """A confirmation was declined (``map reset``, ``disconnect``): nothing was changed."""

    exit_code = 1


class Interrupted(StsyncError):
    """Ctrl-C (SIGINT): the run stopped where it was. Everything it did is in the ledger, so
    the same command resumes. 130 is the shells' code for a process ended by SIGINT."""

    exit_code = 130

    def __init__(
        self,
        message: str = "interrupted; everything done so far is recorded",
        *,
        hint: str | None = "run the same command again to resume",
    ) -> None:
        super().__init__(message, hint=hint)


class ApiError(StsyncError):
    """A remote API rejected a request. Carries the remote's words verbatim.

    The record's failure, not the run's: authentication and rate limits have classes of
    their own (``AuthError``, ``RateLimited``), so what is left is this request refused.
    """

    service = "remote"
    shape_fields: tuple[str, ...] = ("service", "status", "title", "errors", "trace_id", "method", "path")
    stops_run = False

    def __init__(
        self,
        message: str,
        *,
        status: int,
        title: str | None = None,
        errors: dict[str, list[str]] | None = None,
        trace_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.title = title
        self.errors = errors or {}
        self.trace_id = trace_id
        self.method = method
        self.path = path


class ServiceTitanApiError(ApiError):
    service = "servicetitan"


class ReferralFactoryApiError(ApiError):
    service = "referral_factory"


class DuplicateEmail(ReferralFactoryApiError):
    """422: the e-mail already exists in the campaign. Search for the user and adopt it."""


class NotFound(ReferralFactoryApiError):
    """Referral Factory's own JSON 404 for ``url``. It proves a deletion only while the API
    is otherwise answering: ``ReferralFactoryClient.confirm_deleted`` decides (a 404 that is
    not the API's JSON never becomes this class: the client raises a ``ConfigError`` or a
    ``TemporaryError`` for it)."""

    shape_fields = (*ReferralFactoryApiError.shape_fields, "url")

    def __init__(self, message: str, *, url: str, **fields: Any) -> None:
        super().__init__(message, status=404, **fields)
        self.url = url


def error_summary(error: Mapping[str, Any] | None) -> str:
    """A stored error (``to_dict()``, or an older row) for a person: a remote's status and
    title, then each field's messages; otherwise the message."""
    if not error:
        return ""
    if error.get("service") and error.get("status") is not None:
        title = error.get("title") or error.get("message") or "no title"
        text = f"HTTP {error['status']}: {title}"
        fields = error.get("errors") or {}
        if fields:
            text += " — " + "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
        return text
    return str(error.get("message") or error)
