"""`stsync connect` and `stsync disconnect`."""

from __future__ import annotations

import typer

from stsync import credentials
from stsync.cli.choices import choice
from stsync.cli.context import AppContext
from stsync.cli.help import SETUP, examples
from stsync.vocabulary import Environment, SecretsStore

ENVIRONMENT_WORD = choice(Environment)
SECRETS_STORE_WORD = choice(SecretsStore)

CONNECT_EXAMPLES = examples(
    ("stsync connect", "asks for each value on a terminal (secrets typed hidden), verifies them live, stores them"),
    (
        "stsync connect --environment production --tenant-id 1234567\n--client-id cid.xxxx --booking-provider 42 --campaign-id 7",
        "non-interactive: the secrets come from STSYNC_ST_CLIENT_SECRET, STSYNC_ST_APP_KEY, STSYNC_RF_API_KEY",
    ),
    ("stsync connect --secrets-store file", "a headless server without an OS keyring: a 0600 file in the state directory"),
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
        None,
        "--environment",
        parser=ENVIRONMENT_WORD,
        help="Which ServiceTitan the credentials belong to (production by default).",
    ),
    tenant_id: int | None = typer.Option(None, "--tenant-id", metavar="ID", help="ServiceTitan Tenant ID."),
    client_id: str | None = typer.Option(None, "--client-id", metavar="ID", help="ServiceTitan Client ID."),
    client_secret: str | None = typer.Option(
        None,
        credentials.ST_CLIENT_SECRET.option,
        metavar="SECRET",
        help=f"{credentials.ST_CLIENT_SECRET.label} (prefer the prompt or {credentials.ST_CLIENT_SECRET.env_var.name}).",
    ),
    app_key: str | None = typer.Option(
        None,
        credentials.ST_APP_KEY.option,
        metavar="KEY",
        help=f"{credentials.ST_APP_KEY.label} (or {credentials.ST_APP_KEY.env_var.name}).",
    ),
    booking_provider: int | None = typer.Option(
        None, "--booking-provider", metavar="VALUE", help="The \"Allowed 'booking_provider' value\" shown by ServiceTitan."
    ),
    rf_api_key: str | None = typer.Option(
        None,
        credentials.RF_API_KEY.option,
        metavar="KEY",
        help=f"{credentials.RF_API_KEY.label} (or {credentials.RF_API_KEY.env_var.name}).",
    ),
    campaign_id: int | None = typer.Option(None, "--campaign-id", metavar="ID", help="Referral Factory campaign ID."),
    secrets_store: SecretsStore = typer.Option(
        SecretsStore.KEYRING,
        "--secrets-store",
        parser=SECRETS_STORE_WORD,
        help="keyring: the OS keyring; file: a 0600 file in the state directory (headless servers).",
    ),
    no_verify: bool = typer.Option(False, "--no-verify", help="Store without checking the credentials live."),
) -> None:
    from stsync.errors import UsageError
    from stsync.services.connect import (
        FLAG_FOR,
        ConnectValues,
        connect,
        label_for,
        plan_connect,
    )

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    given = ConnectValues(
        environment=environment,
        tenant_id=tenant_id,
        client_id=client_id,
        booking_provider=booking_provider,
        campaign_id=campaign_id,
        st_client_secret=client_secret,
        st_app_key=app_key,
        rf_api_key=rf_api_key,
    )
    plan = plan_connect(app_ctx.paths, given)
    values = plan.values
    if plan.missing:
        if not term.can_ask:
            raise UsageError(
                "missing (not a terminal, so nothing can be asked): "
                + ", ".join(f"{FLAG_FOR[m]} ({label_for(m)})" for m in plan.missing),
                hint=f"pass them as options; secrets may also come from {credentials.env_var_names()}",
            )
        for name in plan.missing:
            label = label_for(name)
            is_secret = name in credentials.SECRET_NAMES
            kind = int if name in ("tenant_id", "booking_provider", "campaign_id") else str
            answer = typer.prompt(label, hide_input=is_secret, type=kind, err=True)
            setattr(values, name, answer)
    if secrets_store == "file":
        term.warning(
            f"secrets will be stored in a plain file readable only by you: {app_ctx.paths.secrets_file} "
            "(use the OS keyring where one is available)"
        )
    verify = not no_verify
    if verify:
        term.info("Verifying ServiceTitan and Referral Factory…")
    result = connect(
        app_ctx.paths, values, secrets_store="file" if secrets_store == SecretsStore.FILE else "keyring", verify=verify
    )
    app_ctx.result(**result.to_dict())

    if verify:
        term.success("ServiceTitan token issued (Client ID, Client Secret, App Key, Tenant ID)")
        term.success(f"Booking Provider Value {result.booking_provider} accepted")
        term.success(
            f'Referral Factory key valid; campaign {result.campaign_id} "{result.verification.campaign_name}" is launched'
        )
    else:
        term.warning("not verified (--no-verify): run `stsync validate --online` to check the connection")
    where = "the OS keyring" if secrets_store == "keyring" else str(app_ctx.paths.secrets_file)
    if result.stored_secrets:
        term.success(f"secrets stored in {where}: {', '.join(result.stored_secrets)}")
    term.success(
        f"{'created' if result.created_config else 'updated'} {result.config_path}"
        + (" with the default mapping" if result.created_config else " (mapping kept)")
    )
    term.info("Next: `stsync map show` to review the mapping, then `stsync validate --online`.")
    app_ctx.result(**result.to_dict())


def disconnect_command(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    from stsync.services.connect import disconnect

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    term.confirm_destructive(
        f"Remove the secrets of connection '{app_ctx.paths.name}'?",
        yes=yes,
        refusal="disconnect removes this connection's secrets; pass --yes to confirm",
    )
    result = disconnect(app_ctx.paths)
    app_ctx.result(**result.to_dict())
    term.success(
        f"disconnected '{result.connection}': removed {', '.join(result.removed_secrets) or 'no stored secrets'}"
        + ("; cached token dropped" if result.removed_token else "")
    )
    if result.kept:
        term.info("kept: " + ", ".join(result.kept) + " (run `stsync connect` to reconnect)")
