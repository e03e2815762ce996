"""`stsync connect` and `stsync disconnect`.

On a terminal, ``connect`` asks for what it lacks — the environment as a choice, then each
value with where it is found — offers to replace each stored secret, verifies with a ✓ per
check as it passes, and when a value is rejected asks again for that value only, keeping
everything else. Off a terminal (or with ``--secrets-from-stdin``) it asks nothing: a missing
value is a usage error naming its option, and the first failure is the command's.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from stsync import credentials
from stsync.cli.choices import choice
from stsync.cli.context import AppContext
from stsync.cli.help import SETUP, examples
from stsync.vocabulary import Environment, SecretsStore

if TYPE_CHECKING:
    from stsync.checks.result import Check
    from stsync.cli.terminal import Terminal
    from stsync.services.connect import ConnectPlan, Verification

# A value rejected this many times in a row ends the command with its error.
MAX_ATTEMPTS_PER_VALUE = 3
ENVIRONMENT_HELP = (
    "  production: your live ServiceTitan tenant; integration: ServiceTitan's integration (test) environment. "
    "The Client ID and Secret are made for one of them."
)


ENVIRONMENT_WORD = choice(Environment)
SECRETS_STORE_WORD = choice(SecretsStore)

CONNECT_EXAMPLES = examples(
    ("stsync connect", "asks for each value on a terminal, saying where it is found; verifies live; stores them"),
    (
        "stsync connect --environment production --tenant-id 1234567\n--client-id cid.xxxx --booking-provider 42 --campaign-id 7",
        "non-interactive: the secrets come from STSYNC_ST_CLIENT_SECRET, STSYNC_ST_APP_KEY, STSYNC_RF_API_KEY",
    ),
    (
        "stsync connect --secrets-from-stdin --secrets-store file --environment production\n--tenant-id 1234567 "
        "--client-id cid.xxxx --booking-provider 42 --campaign-id 7",
        "a provisioning script: NAME=value lines on stdin, kept in a 0600 file (no OS keyring)",
    ),
    ("stsync --config acme.toml connect", "a second connection (another tenant or campaign) in its own config file"),
)
DISCONNECT_EXAMPLES = examples(
    ("stsync disconnect", "asks first; config and ledger are kept"),
    ("stsync disconnect --yes", "in a script"),
)


def register(app: typer.Typer) -> None:
    app.command(
        "connect",
        help="Connect (or reconnect) ServiceTitan and Referral Factory; verifies live, stores secrets.",
        epilog=CONNECT_EXAMPLES,
        rich_help_panel=SETUP,
    )(connect_command)
    app.command(
        "disconnect",
        help="Remove this connection's secrets and cached token (config and ledger are kept).",
        epilog=DISCONNECT_EXAMPLES,
        rich_help_panel=SETUP,
    )(disconnect_command)


def connect_command(
    ctx: typer.Context,
    environment: Environment | None = typer.Option(
        None, "--environment", parser=ENVIRONMENT_WORD, help="Which ServiceTitan the credentials belong to (asked on a terminal)."
    ),
    tenant_id: int | None = typer.Option(
        None, credentials.TENANT_ID.option, min=1, metavar="ID", help=f"{credentials.TENANT_ID.label}."
    ),
    client_id: str | None = typer.Option(
        None, credentials.CLIENT_ID.option, metavar="ID", help=f"{credentials.CLIENT_ID.label}."
    ),
    client_secret: str | None = typer.Option(
        None,
        credentials.ST_CLIENT_SECRET.option,
        metavar="SECRET",
        help=f"{credentials.ST_CLIENT_SECRET.label} (prefer the prompt, {credentials.ST_CLIENT_SECRET.env_var.name} "
        "or --secrets-from-stdin: options show in the process list).",
    ),
    app_key: str | None = typer.Option(
        None,
        credentials.ST_APP_KEY.option,
        metavar="KEY",
        help=f"{credentials.ST_APP_KEY.label} (or {credentials.ST_APP_KEY.env_var.name}).",
    ),
    booking_provider: int | None = typer.Option(
        None, credentials.BOOKING_PROVIDER.option, min=1, metavar="VALUE", help="The \"Allowed 'booking_provider' value\"."
    ),
    rf_api_key: str | None = typer.Option(
        None,
        credentials.RF_API_KEY.option,
        metavar="KEY",
        help=f"{credentials.RF_API_KEY.label} (or {credentials.RF_API_KEY.env_var.name}).",
    ),
    campaign_id: int | None = typer.Option(
        None, credentials.CAMPAIGN_ID.option, min=1, metavar="ID", help=f"{credentials.CAMPAIGN_ID.label}."
    ),
    secrets_store: SecretsStore | None = typer.Option(
        None,
        "--secrets-store",
        parser=SECRETS_STORE_WORD,
        help="keyring (the OS keyring) or file (a 0600 file in the state dir). Remembered in the config; "
        "default: the one it names, else keyring.",
    ),
    secrets_from_stdin: bool = typer.Option(
        False,
        "--secrets-from-stdin",
        help="Read the secrets from standard input, one NAME=value per line (st_client_secret, st_app_key, "
        "rf_api_key, or their STSYNC_* names): for provisioning scripts.",
    ),
    connection: str | None = typer.Option(
        None,
        "--connection",
        metavar="NAME",
        help="Name a new connection (its state directory and keyring entries); default: the config's, else its file name.",
    ),
    no_verify: bool = typer.Option(False, "--no-verify", help="Store without checking the credentials live."),
) -> None:
    from stsync.errors import UsageError
    from stsync.services.connect import (
        ConnectValues,
        label_for,
        option_for,
        plan_connect,
        read_secret_lines,
        save_connection,
        verify_connection,
    )

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    stdin_secrets = None
    if secrets_from_stdin:
        if sys.stdin.isatty():
            term.info("Reading NAME=value lines from standard input until Ctrl-D (the values are not shown)…")
        stdin_secrets = read_secret_lines(sys.stdin.read())
    given = ConnectValues(
        environment=environment.value if environment is not None else None,
        tenant_id=tenant_id,
        client_id=client_id,
        booking_provider=booking_provider,
        campaign_id=campaign_id,
        st_client_secret=client_secret,
        st_app_key=app_key,
        rf_api_key=rf_api_key,
    )
    # The name, the store (usable now?) and the values: before anything is asked or sent.
    plan = plan_connect(
        app_ctx.config_path,
        given,
        connection=connection,
        secrets_store=secrets_store.value if secrets_store is not None else None,
        stdin_secrets=stdin_secrets,
    )
    app_ctx.use_paths(plan.paths)

    interactive = term.can_ask and not secrets_from_stdin
    if interactive:
        _ask_what_is_missing(term, plan)
    elif plan.missing:
        raise UsageError(
            "missing (not a terminal, so nothing can be asked): "
            + ", ".join(f"{option_for(m)} ({label_for(m)})" for m in plan.missing),
            hint=f"pass them as options; secrets may also come from {credentials.env_var_names()} "
            "or --secrets-from-stdin",
        )

    verification = None
    if not no_verify:
        consent = app_ctx.consent()

        def verify(plan: ConnectPlan, *, on_check: Callable[[Check], None]) -> Verification:
            return verify_connection(plan, on_check=on_check, consent=consent)

        verification = _verify(term, plan, interactive=interactive, verify=verify)
    result = save_connection(plan, verification)

    if verification is None:
        term.warning("not verified (--no-verify): run `stsync validate --online` to check the connection")
    if result.store_warning:
        term.warning(result.store_warning)
    where = "the OS keyring" if result.secrets_store == "keyring" else str(plan.paths.secrets_file)
    if result.stored_secrets:
        term.success(f"secrets stored in {where}: {', '.join(result.stored_secrets)}")
    if result.secrets_from_env:
        term.info(f"taken from the environment, not stored: {', '.join(result.secrets_from_env)}")
    renamed = f" (it was '{result.previous_connection}')" if result.previous_connection else ""
    term.success(
        f"{'created' if result.created_config else 'updated'} {result.config_path}"
        + (" with the default mapping" if result.created_config else " (mapping kept)")
        + f": connection '{result.connection}'{renamed}"
    )
    term.info("Next: `stsync map show` to review the mapping, then `stsync validate --online`.")
    app_ctx.result(**result.to_dict())


def _verify(term: Terminal, plan: ConnectPlan, *, interactive: bool, verify: Any) -> Any:
    """Verify until it holds; on a terminal, ask again for each value a check rejects."""
    rejections: Counter[str] = Counter()

    def show(check: Check) -> None:
        if check.passed:
            term.success(f"{check.name}: {check.message}")

    while True:
        term.info("Verifying ServiceTitan and Referral Factory…")
        verification = verify(plan, on_check=show)
        failure = verification.failure
        if failure is None:
            return verification
        rejections.update(verification.rejected)
        if not interactive or not verification.rejected or max(rejections.values()) >= MAX_ATTEMPTS_PER_VALUE:
            raise failure
        term.error(str(failure), failure.hint)
        for name in verification.rejected:
            _ask(term, plan, name, again=True)


def _ask_what_is_missing(term: Terminal, plan: ConnectPlan) -> None:
    from stsync.services.connect import ENVIRONMENT, label_for

    if plan.origins.get(ENVIRONMENT) == "default":
        _ask(term, plan, ENVIRONMENT)
    for name in plan.stored_secrets:
        if not term.confirm(f"A stored {label_for(name)} exists — keep it?", default=True):
            _ask(term, plan, name)
    for name in plan.missing:
        _ask(term, plan, name)


def _ask(term: Terminal, plan: ConnectPlan, name: str, *, again: bool = False) -> None:
    """One value from the person, with where it is found; what they type replaces it."""
    from stsync.services.connect import ENVIRONMENT, INTEGER_VALUES, describe_value

    if name == ENVIRONMENT:
        current = plan.current(ENVIRONMENT)
        _say(term, ENVIRONMENT_HELP)
        answer: Any = term.ask(
            "ServiceTitan environment",
            parse=_environment,
            choices=tuple(Environment),
            default=str(current or Environment.PRODUCTION),
        )
        plan.set(ENVIRONMENT, answer)
        return
    value = describe_value(name)
    _say(term, f"  Find it in: {value.where}")
    if name in credentials.SECRET_NAMES:
        answer = term.ask(f"{value.label}{' (again)' if again else ''}", parse=_non_blank, hidden=True)
    else:
        current = plan.current(name)
        default = str(current) if again and current not in (None, "") else None
        answer = term.ask(value.label, parse=_positive_integer if name in INTEGER_VALUES else _non_blank, default=default)
    plan.set(name, answer)


def _say(term: Terminal, text: str) -> None:
    """A line that goes with a prompt: shown even with -q (a prompt without it is a riddle)."""
    term.err.print(f"[dim]{escape(text)}[/]")


def _environment(text: str) -> str:
    word = text.strip().casefold()
    if word not in tuple(Environment):
        raise ValueError(f"{text!r} is not an environment: choose {' or '.join(Environment)}")
    return word


def _non_blank(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("it cannot be blank")
    return value


def _positive_integer(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{value!r} is not a number of 1 or more")
    return int(value)


def disconnect_command(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    from stsync.services.connect import DisconnectResult, disconnect, disconnect_would_remove

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    paths = app_ctx.paths
    if not disconnect_would_remove(paths):
        app_ctx.result(**DisconnectResult(paths.name, [], False, [], already_disconnected=True).to_dict())
        term.info(f"connection '{paths.name}' is already disconnected: no stored secrets, no cached token")
        return
    term.confirm_destructive(
        f"Remove the secrets of connection '{paths.name}'?",
        yes=yes,
        refusal="disconnect removes this connection's secrets; pass --yes to confirm",
    )
    result = disconnect(paths)
    app_ctx.result(**result.to_dict())
    if result.already_disconnected:
        term.info(f"connection '{result.connection}' is already disconnected: no stored secrets, no cached token")
    else:
        term.success(
            f"disconnected '{result.connection}': removed {', '.join(result.removed_secrets) or 'no stored secrets'}"
            + ("; cached token dropped" if result.removed_token else "")
        )
    if result.kept:
        term.info("kept: " + ", ".join(result.kept) + " (run `stsync connect` to reconnect)")
