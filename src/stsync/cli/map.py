"""`stsync map`: see and edit the field mapping (the setup guide's Steps 4–7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.context import AppContext
from stsync.vocabulary import Action, SyncMode

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal

REWRITE_NOTE = (
    "Edits rewrite the config file in stsync's layout with its own comments: comments you added by hand are not kept."
)

map_app = typer.Typer(
    name="map",
    help="See and edit the field mapping: leads and referrers → ServiceTitan bookings, customers → referrers. "
    + REWRITE_NOTE,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def register(app: typer.Typer) -> None:
    app.add_typer(map_app, name="map")


FOR_HELP = "leads, referrers or customers."


def _edit_command(name: str, summary: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A ``map`` command that rewrites the file: its help says so, its one-line summary does not."""
    return map_app.command(name, help=summary + REWRITE_NOTE, short_help=summary)


@map_app.command("show", help="The mapping as the setup guide's table, with a Setup Required banner for what is missing.")
def show_command(
    ctx: typer.Context,
    for_: str | None = typer.Option(None, "--for", help="Only this section: " + FOR_HELP),
) -> None:
    from stsync.mapping.overview import mapping_overview
    from stsync.services.mapping_edit import FOR_CHOICES, for_section, load_or_default

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    sections: tuple[str, ...] = FOR_CHOICES if for_ is None else (for_section(for_),)
    config, default, _ = load_or_default(app_ctx.config_path)
    overview = mapping_overview(config, sections=sections)
    if default:
        term.warning(f"no config at {app_ctx.config_path} yet: this is the default mapping (`stsync connect` writes it)")
    for name in sections:
        if name == "customers":
            _render_customers(term, overview["customers"])
        else:
            _render_booking_section(term, name, overview[name])
    app_ctx.emit({"ok": True, "config_path": str(app_ctx.config_path), "default": default, **overview})


def _render_booking_section(term: Terminal, name: str, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.panel import Panel

    who = "lead joins campaign" if name == "leads" else "referrer joins campaign"
    style = "green" if data["action"] == Action.CREATE_BOOKING else "yellow"
    term.print(f"[bold]{name.capitalize()}[/] — When {who}: [{style}]{escape(data['action_label'])}[/]")
    if data["action"] != Action.CREATE_BOOKING:
        whom = "referred leads" if name == "leads" else "referrers"
        term.print(f"[yellow]Nothing to action — {whom} will not be sent to ServiceTitan[/]")
    if data["action"] != Action.CREATE_BOOKING and not any(row["mapped"] for row in data["fields"]):
        term.print("[dim]No field mapping (none is needed while nothing is sent).[/]\n")
        return
    title = f"{name.capitalize()} → ServiceTitan booking (* required)"
    table = term.table("Data Type", "From Referral Factory", "To ServiceTitan", title=title)
    for row in data["fields"]:
        target = escape(row["target_label"]) + (" *" if row["required"] else "")
        target += f" [dim]({escape(row['target'])})[/]"
        if row["mapped"]:
            table.add_row(escape(row["data_type"] or ""), escape(row["from"] or ""), target)
        else:
            table.add_row("[red]—[/]", "[red]not mapped[/]", f"[red]{target}[/]")
    term.print(table)
    if data["setup_required"]:
        missing = ", ".join(f"{_label(t)} ({t})" for t in data["missing"])
        first = data["missing"][0]
        term.print(
            Panel(
                f"[bold]Required ServiceTitan fields not mapped:[/] {escape(missing)}\n"
                "No booking can be created until each one is mapped, e.g.\n"
                f"  stsync map set {first} --from <field> --for {name}   (or --value, --select, --template)",
                title="[bold]Setup Required[/]",
                title_align="left",
                border_style="red",
                style="red",
                expand=False,
            )
        )
    qualification = data.get("qualification")
    if qualification is not None:
        unqualify = qualification["unqualify_on"]
        extra = f"; taken back on {', '.join(unqualify)}" if unqualify else ""
        if qualification.get("hold_days"):
            extra += f"; {qualification['hold_label']}"
        term.print(f"Qualification rule: [bold]{escape(qualification['label'])}[/]{escape(extra)}")
    term.print("")


def _label(target: str) -> str:
    from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS

    return BOOKING_TARGET_LABELS.get(target, target)


def _render_customers(term: Terminal, data: dict[str, Any]) -> None:
    from rich.markup import escape

    mode = "Ongoing Sync" if data["mode"] == SyncMode.ONGOING else "One-Time Sync"
    inactive = "included" if data["include_inactive"] else "skipped"
    term.print(f"[bold]Customers[/] — ServiceTitan customers → campaign referrers: {mode}; inactive customers {inactive}")
    table = term.table("Data Type", "From ServiceTitan", "To Referral Factory", title="Map Fields (* required)")
    for row in data["fields"]:
        target = escape(row["target_label"]) + (" *" if row["required"] else "")
        if row["mapped"]:
            table.add_row(escape(row["data_type"] or ""), escape(row["from"] or ""), target)
        else:
            table.add_row("[red]—[/]", "[red]not mapped[/]", f"[red]{target}[/]")
    term.print(table)
    if data["missing"]:
        term.print(f"[red]Setup Required: customers cannot become referrers without {', '.join(data['missing'])}[/]")
    returns = term.table("From Referral Factory", "To ServiceTitan (customer custom field)", title="Map Return Fields")
    for row in data["return_fields"]:
        returns.add_row(escape(row["value_label"]), escape(row["custom_field"]))
    if data["return_fields"]:
        term.print(returns)
    else:
        term.print("Map Return Fields: none (nothing is written back to ServiceTitan)")
    term.print("")


@_edit_command("set", "Map a target field: --from a source field, --value a fixed text, --select an option, or --template. ")
def set_command(
    ctx: typer.Context,
    target: str = typer.Argument(
        ...,
        help="The field to fill: a ServiceTitan booking field (leads, referrers) or a Referral Factory user field (customers).",
    ),
    from_: str | None = typer.Option(
        None, "--from", help="Dynamic Value: a source field (first_name, meta.<label>, customer.first_name, ...)."
    ),
    value: str | None = typer.Option(None, "--value", help="Fixed Value (Manual Input): the same text for every record."),
    select: str | None = typer.Option(
        None, "--select", help="Manual Select: one of the target's options (yes/no, Residential/Commercial, ...)."
    ),
    template: str | None = typer.Option(None, "--template", help='Several fields joined: "{first_name} {meta.Last Name}".'),
    for_: str = typer.Option("leads", "--for", help=FOR_HELP),
) -> None:
    from stsync.errors import UsageError
    from stsync.services.mapping_edit import set_field

    given = [
        (kind, text)
        for kind, text in (("from", from_), ("value", value), ("select", select), ("template", template))
        if text is not None
    ]
    if len(given) != 1:
        raise UsageError(
            "give exactly one of --from, --value, --select, --template"
            + (f" (got {', '.join('--' + k for k, _ in given)})" if given else ""),
            hint=f"e.g. stsync map set {target} --from first_name",
        )
    kind, text = given[0]
    app_ctx = AppContext.from_typer(ctx)
    _report(app_ctx, set_field(app_ctx.config_path, target, kind=kind, value=text, for_=for_))


@_edit_command("unset", "Remove a target's mapping. ")
def unset_command(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="The mapped field to clear."),
    for_: str = typer.Option("leads", "--for", help=FOR_HELP),
) -> None:
    from stsync.services.mapping_edit import unset_field

    app_ctx = AppContext.from_typer(ctx)
    _report(app_ctx, unset_field(app_ctx.config_path, target, for_=for_))


@_edit_command("action", "What happens when a lead (or referrer) joins: create-booking or nothing. ")
def action_command(
    ctx: typer.Context,
    section: str = typer.Argument(..., help="leads or referrers."),
    action: str = typer.Argument(
        ..., help="create-booking (Create New Booking In Service Titan) or nothing (Nothing to action)."
    ),
) -> None:
    from stsync.services.mapping_edit import set_action

    app_ctx = AppContext.from_typer(ctx)
    _report(app_ctx, set_action(app_ctx.config_path, section.strip().casefold(), action))


@_edit_command("qualify", "When a referral qualifies: none, job-created, or job-status --status S. ")
def qualify_command(
    ctx: typer.Context,
    rule: str = typer.Argument(..., help="none | job-created | job-status."),
    status: str | None = typer.Option(
        None, "--status", help="With job-status: Scheduled, Dispatched, InProgress, Hold, Completed or Canceled."
    ),
    unqualify_on: list[str] | None = typer.Option(
        None, "--unqualify-on", help="Take a qualification back on job-canceled or booking-dismissed (repeatable; none clears)."
    ),
    hold_days: int | None = typer.Option(
        None,
        "--hold-days",
        help="Qualify only after the job kept meeting the rule, not canceled, for this many days (0–365; 0: at once).",
    ),
) -> None:
    from stsync.services.mapping_edit import set_qualification

    app_ctx = AppContext.from_typer(ctx)
    _report(
        app_ctx,
        set_qualification(app_ctx.config_path, rule, status=status, unqualify_on=unqualify_on, hold_days=hold_days),
    )


@_edit_command("return-field", "Write a referrer's referral_link or referral_code back to a ServiceTitan customer custom field. ")
def return_field_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The ServiceTitan customer custom field's name (a Text field)."),
    field: str | None = typer.Argument(None, help="referral_link or referral_code."),
    remove: bool = typer.Option(False, "--remove", help="Stop writing this custom field."),
) -> None:
    from stsync.errors import UsageError
    from stsync.services.mapping_edit import remove_return_field, set_return_field

    app_ctx = AppContext.from_typer(ctx)
    if remove:
        if field is not None:
            raise UsageError("--remove takes only the custom field's name", hint=f'stsync map return-field "{name}" --remove')
        _report(app_ctx, remove_return_field(app_ctx.config_path, name))
        return
    if field is None:
        raise UsageError(
            "give the value to write: referral_link or referral_code", hint=f'stsync map return-field "{name}" referral_link'
        )
    _report(app_ctx, set_return_field(app_ctx.config_path, name, field))


@_edit_command("reset", "Put leads, referrers and customers back to the default mapping (the connection is kept). ")
def reset_command(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    from stsync.services.mapping_edit import reset_mapping

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    term.confirm_destructive(
        f"Replace the mapping in {app_ctx.config_path} with the default?",
        yes=yes,
        refusal="map reset replaces the whole mapping; pass --yes to confirm",
    )
    _report(app_ctx, reset_mapping(app_ctx.config_path))


def _report(app_ctx: AppContext, result: Any) -> None:
    term = app_ctx.terminal
    if result.changed:
        term.success(result.change)
    else:
        term.info(f"unchanged: {result.change}")
    if result.created_config:
        term.info(f"created {result.config_path} with the default mapping; run `stsync connect` to set up the connection")
    if result.dropped_comments:
        term.warning(
            f"{result.dropped_comments} comment line(s) you added to {result.config_path} were not kept "
            "(stsync rewrites the file with its own comments)"
        )
    for warning in result.warnings:
        term.warning(warning)
    if result.setup_required:
        term.warning(
            f"Setup Required: [{result.section}] has no mapping for required field(s): {', '.join(result.setup_required)}"
        )
    app_ctx.emit({"ok": True, **result.to_dict()})
