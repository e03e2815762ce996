"""`stsync map`: see and edit the field mapping (the setup guide's Steps 4–7)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import typer

from stsync.cli.choices import choice
from stsync.cli.context import AppContext
from stsync.cli.help import SETUP, examples
from stsync.cli.tables import Column, Role
from stsync.vocabulary import Action, BookingSection, QualificationRule, ReturnValue, Section, SyncMode, UnqualifyEvent

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
    epilog=examples(
        ("stsync map show", "the mapping as the setup guide's tables"),
        ('stsync map set phone --from "meta.Phone Number"', "a lead's form field fills the booking's phone"),
        ("stsync map qualify job-status --status Completed", "qualify a referral when its job is completed"),
    ),
)


def register(app: typer.Typer) -> None:
    app.add_typer(map_app, name="map", rich_help_panel=SETUP)


FOR_HELP = "The tab: leads, referrers (→ ServiceTitan bookings) or customers (→ Referral Factory referrers)."

# ServiceTitan's job statuses (stsync.servicetitan.vocabulary.JOB_STATUSES, which a test compares):
# not imported, so that `stsync --help` and completion stay fast.
JOB_STATUSES = ("Scheduled", "Dispatched", "InProgress", "Hold", "Completed", "Canceled")
JobStatus = Literal["Scheduled", "Dispatched", "InProgress", "Hold", "Completed", "Canceled"]


class UnqualifyWord(StrEnum):
    """What --unqualify-on takes: an UnqualifyEvent (a test keeps them the same), or none."""

    JOB_CANCELED = UnqualifyEvent.JOB_CANCELED.value
    BOOKING_DISMISSED = UnqualifyEvent.BOOKING_DISMISSED.value
    NONE = "none"  # clears them



def _dashes(token: str) -> str:
    """The config writes job_created, the command line job-created: both are taken, dashes shown."""
    return token.replace("_", "-")


DASHED_WORDS = {"help_option_names": ["-h", "--help"], "token_normalize_func": _dashes}


def _complete_dashed(vocabulary: type[StrEnum]) -> Any:
    """Shell completion offers the spelling the help shows (job-created, not job_created)."""

    def complete(incomplete: str) -> list[str]:
        return [word for word in (_dashes(member.value) for member in vocabulary) if word.startswith(incomplete)]

    return complete


def _edit_command(name: str, summary: str, *, epilog: str, **settings: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A ``map`` command that rewrites the file: its help says so, its one-line summary does not."""
    return map_app.command(name, help=f"{summary} {REWRITE_NOTE}", short_help=summary, epilog=epilog, **settings)


STATUS_HELP = "With job-status: the ServiceTitan job status that qualifies: " + ", ".join(JOB_STATUSES) + "."

# Parsers of the closed choices (cli.choices) and completions of the dashed ones.
SECTION_WORD = choice(Section)
BOOKING_SECTION_WORD = choice(BookingSection)
ACTION_WORD = choice(Action, dashed=True)
RULE_WORD = choice(QualificationRule, dashed=True)
JOB_STATUS_WORD = choice(JOB_STATUSES)
UNQUALIFY_WORD = choice(UnqualifyWord, dashed=True)
RETURN_VALUE_WORD = choice(ReturnValue)
complete_action = _complete_dashed(Action)
complete_rule = _complete_dashed(QualificationRule)
complete_unqualify = _complete_dashed(UnqualifyWord)


@map_app.command(
    "show",
    help="The mapping as the setup guide's table, with a Setup Required banner for what is missing. "
    "On a terminal a table; in a pipe or a file the same table as plain text.",
    epilog=examples(
        ("stsync map show", "every tab: leads, referrers, customers"),
        ("stsync map show --for customers", "the customer sync's fields and return fields only"),
        ("stsync map show > mapping.txt", "the tables as plain text, to keep or attach"),
    ),
)
def show_command(
    ctx: typer.Context,
    for_: Section | None = typer.Option(None, "--for", parser=SECTION_WORD, help="Only this tab. " + FOR_HELP),
) -> None:
    from stsync.mapping.overview import mapping_overview
    from stsync.services.mapping_edit import FOR_CHOICES, for_section, load_or_default

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    sections: tuple[str, ...] = FOR_CHOICES if for_ is None else (for_section(for_),)
    config, default, _ = load_or_default(app_ctx.config_path)
    overview = mapping_overview(config, sections=sections)
    app_ctx.result(config_path=str(app_ctx.config_path), default=default, **overview)
    if default:
        term.warning(f"no config at {app_ctx.config_path} yet: this is the default mapping (`stsync connect` writes it)")
    for name in sections:
        if name == "customers":
            _render_customers(term, overview["customers"])
        else:
            _render_booking_section(term, name, overview[name])


# The mapping tables are data (stdout, shown with -q): on a terminal with colour, in a pipe or
# a file (`map show > mapping.txt`) as plain aligned text.
MAPPING_COLUMNS = (
    Column("Data Type", Role.TEXT, min_width=13),
    Column("From Referral Factory", Role.TEXT, min_width=16),
    Column("To ServiceTitan", Role.TEXT, min_width=20),
)
CUSTOMER_COLUMNS = (
    Column("Data Type", Role.TEXT, min_width=13),
    Column("From ServiceTitan", Role.TEXT, min_width=16),
    Column("To Referral Factory", Role.TEXT, min_width=16),
)
RETURN_COLUMNS = (
    Column("From Referral Factory", Role.TEXT, min_width=14),
    Column("To ServiceTitan (customer custom field)", Role.TEXT, min_width=20),
)


def _render_booking_section(term: Terminal, name: str, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.text import Text

    who = "lead joins campaign" if name == "leads" else "referrer joins campaign"
    style = "green" if data["action"] == Action.CREATE_BOOKING else "yellow"
    term.show(f"[bold]{name.capitalize()}[/] — When {who}: [{style}]{escape(data['action_label'])}[/]")
    if data["action"] != Action.CREATE_BOOKING:
        whom = "referred leads" if name == "leads" else "referrers"
        term.show(f"[yellow]Nothing to action — {whom} will not be sent to ServiceTitan[/]")
    if data["action"] != Action.CREATE_BOOKING and not any(row["mapped"] for row in data["fields"]):
        term.show("[dim]No field mapping (none is needed while nothing is sent).[/]\n")
        return
    rows = []
    for row in data["fields"]:
        target = Text(row["target_label"] + (" *" if row["required"] else ""))
        target.append(f" ({row['target']})", style="dim")
        if row["mapped"]:
            rows.append([row["data_type"] or "", row["from"] or "", target])
        else:
            target.stylize("red")
            rows.append([Text("—", style="red"), Text("not mapped", style="red"), target])
    term.table(list(MAPPING_COLUMNS), rows, title=f"{name.capitalize()} → ServiceTitan booking (* required)")
    if data["setup_required"]:
        _banner(term, "Setup Required", setup_required_lines(name, data))
    qualification = data.get("qualification")
    if qualification is not None:
        unqualify = qualification["unqualify_on"]
        extra = f"; taken back on {', '.join(unqualify)}" if unqualify else ""
        if qualification.get("hold_days"):
            extra += f"; {qualification['hold_label']}"
        term.show(f"Qualification rule: [bold]{escape(qualification['label'])}[/]{escape(extra)}")
    term.show("")


def _banner(term: Terminal, title: str, lines: list[str]) -> None:
    from rich.markup import escape

    term.boxed(title, [escape(line) for line in lines], style="red")


def setup_required_lines(name: str, data: dict[str, Any]) -> list[str]:
    """The Setup Required banner of a section: the required fields not mapped, then each entry
    that cannot work as ``validate`` words it (a hand-edited value the target does not take)."""
    lines: list[str] = []
    if data["missing"]:
        missing = ", ".join(f"{_label(t)} ({t})" for t in data["missing"])
        lines += [
            f"Required ServiceTitan fields not mapped: {missing}",
            "No booking can be created until each one is mapped, e.g.",
            f"  stsync map set {data['missing'][0]} --from <field> --for {name}   (or --value, --select, --template)",
        ]
    for problem in data.get("problems", []):
        lines.append(f"{problem['key_path']}: {problem['message']}")
        if problem.get("hint"):
            lines.append(f"  → {problem['hint']}")
    if data.get("problems") and not data["missing"]:
        lines.append("No booking can be created until it is fixed (`stsync validate` checks it).")
    return lines


def _label(target: str) -> str:
    from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS

    return BOOKING_TARGET_LABELS.get(target, target)


def _render_customers(term: Terminal, data: dict[str, Any]) -> None:
    from rich.text import Text

    mode = "Ongoing Sync" if data["mode"] == SyncMode.ONGOING else "One-Time Sync"
    inactive = "included" if data["include_inactive"] else "skipped"
    term.show(f"[bold]Customers[/] — ServiceTitan customers → campaign referrers: {mode}; inactive customers {inactive}")
    rows = []
    for row in data["fields"]:
        target = row["target_label"] + (" *" if row["required"] else "")
        if row["mapped"]:
            rows.append([row["data_type"] or "", row["from"] or "", target])
        else:
            rows.append([Text("—", style="red"), Text("not mapped", style="red"), Text(target, style="red")])
    term.table(list(CUSTOMER_COLUMNS), rows, title="Map Fields (* required)")
    if data["missing"]:
        _banner(term, "Setup Required", [f"customers cannot become referrers without {', '.join(data['missing'])}"])
    for problem in data.get("problems", []):
        lines = [f"{problem['key_path']}: {problem['message']}"] + ([f"  → {problem['hint']}"] if problem.get("hint") else [])
        _banner(term, "Setup Required", lines)
    if data["return_fields"]:
        returns = [[row["value_label"], row["custom_field"]] for row in data["return_fields"]]
        term.table(list(RETURN_COLUMNS), returns, title="Map Return Fields")
    else:
        term.show("Map Return Fields: none (nothing is written back to ServiceTitan)")
    term.show("")


@_edit_command(
    "set",
    "Map a target field: --from a source field, --value a fixed text, --select an option, or --template.",
    epilog=examples(
        ('stsync map set phone --from "meta.Phone Number"', "Dynamic Value: the lead's form field"),
        ('stsync map set summary --template "Referred by {referrer_first_name}"', "several fields joined"),
        ("stsync map set priority --select High --for referrers", "Manual Select, on the referrers' tab"),
        ('stsync map set "meta.Last Name" --from customer.last_name --for customers', "a customer field for customer sync"),
    ),
)
def set_command(
    ctx: typer.Context,
    target: str = typer.Argument(
        ...,
        metavar="TARGET",
        help="The field to fill: a ServiceTitan booking field (leads, referrers) or a Referral Factory user field (customers).",
    ),
    from_: str | None = typer.Option(
        None,
        "--from",
        metavar="FIELD",
        help="Dynamic Value: a source field (first_name, meta.<label>, customer.first_name, ...).",
    ),
    value: str | None = typer.Option(
        None, "--value", metavar="TEXT", help="Fixed Value (Manual Input): the same text for every record."
    ),
    select: str | None = typer.Option(
        None,
        "--select",
        metavar="OPTION",
        help="Manual Select: one of the target's options (yes/no, Residential/Commercial, ...).",
    ),
    template: str | None = typer.Option(
        None, "--template", metavar="TEMPLATE", help='Several fields joined: "{first_name} {meta.Last Name}".'
    ),
    for_: Section = typer.Option(Section.LEADS, "--for", parser=SECTION_WORD, help=FOR_HELP),
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


@_edit_command(
    "unset",
    "Remove a target's mapping.",
    epilog=examples(
        ("stsync map unset phone", "the booking's phone is no longer filled"),
        ('stsync map unset "meta.Last Name" --for customers', "on the customers' tab"),
    ),
)
def unset_command(
    ctx: typer.Context,
    target: str = typer.Argument(..., metavar="TARGET", help="The mapped field to clear."),
    for_: Section = typer.Option(Section.LEADS, "--for", parser=SECTION_WORD, help=FOR_HELP),
) -> None:
    from stsync.services.mapping_edit import unset_field

    app_ctx = AppContext.from_typer(ctx)
    _report(app_ctx, unset_field(app_ctx.config_path, target, for_=for_))


@_edit_command(
    "action",
    "What happens when a lead (or referrer) joins: create-booking or nothing.",
    context_settings=DASHED_WORDS,
    epilog=examples(
        ("stsync map action leads create-booking", "the seed's \"Create New Booking In Service Titan\""),
        ("stsync map action referrers nothing", "\"Nothing to action\": referrers get no booking"),
    ),
)
def action_command(
    ctx: typer.Context,
    section: BookingSection = typer.Argument(
        ..., metavar="SECTION", parser=BOOKING_SECTION_WORD, help="The tab: leads or referrers."
    ),
    action: Action = typer.Argument(
        ...,
        metavar="ACTION",
        parser=ACTION_WORD,
        autocompletion=complete_action,
        help="create-booking (Create New Booking In Service Titan) or nothing (Nothing to action).",
    ),
) -> None:
    from stsync.services.mapping_edit import set_action

    app_ctx = AppContext.from_typer(ctx)
    _report(app_ctx, set_action(app_ctx.config_path, str(section), action))


@_edit_command(
    "qualify",
    "When a referral qualifies: none, job-created, or job-status --status S.",
    context_settings=DASHED_WORDS,
    epilog=examples(
        ("stsync map qualify job-created", "qualified as soon as the booking becomes a job"),
        ("stsync map qualify job-status --status Completed", "qualified when that job is completed"),
        ("stsync map qualify job-status --status Completed --unqualify-on job-canceled", "taken back if the job is cancelled"),
        ("stsync map qualify job-status --status Completed --hold-days 30", "only once the job has stood 30 days, not canceled"),
        ("stsync map qualify none", "\"Do not qualify my referrals\""),
    ),
)
def qualify_command(
    ctx: typer.Context,
    rule: QualificationRule = typer.Argument(
        ...,
        metavar="RULE",
        parser=RULE_WORD,
        autocompletion=complete_rule,
        help="none, job-created or job-status.",
    ),
    status: JobStatus | None = typer.Option(
        None,
        "--status",
        metavar="STATUS",
        parser=JOB_STATUS_WORD,
        help=STATUS_HELP,
    ),
    unqualify_on: list[UnqualifyWord] | None = typer.Option(
        None,
        "--unqualify-on",
        metavar="EVENT",
        parser=UNQUALIFY_WORD,
        autocompletion=complete_unqualify,
        help="Take a qualification back on job-canceled or booking-dismissed (repeatable; none clears).",
    ),
    hold_days: int | None = typer.Option(
        None,
        "--hold-days",
        metavar="DAYS",
        help="Qualify only after the job kept meeting the rule, not canceled, for this many days (0–365; 0: at once).",
    ),
) -> None:
    from stsync.services.mapping_edit import set_qualification

    app_ctx = AppContext.from_typer(ctx)
    events = [str(word.value) for word in unqualify_on] if unqualify_on is not None else None
    _report(
        app_ctx,
        set_qualification(app_ctx.config_path, rule, status=status, unqualify_on=events, hold_days=hold_days),
    )


@_edit_command(
    "return-field",
    "Write a referrer's referral_link or referral_code back to a ServiceTitan customer custom field.",
    epilog=examples(
        ('stsync map return-field "Referral Code" referral_code', "customer sync writes the code to this custom field"),
        ('stsync map return-field "Referral Link" --remove', "stop writing the link"),
    ),
)
def return_field_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The ServiceTitan customer custom field's name (a Text field)."),
    field: ReturnValue | None = typer.Argument(None, metavar="FIELD", parser=RETURN_VALUE_WORD, help="What to write."),
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


@_edit_command(
    "reset",
    "Put leads, referrers and customers back to the default mapping (the connection is kept).",
    epilog=examples(
        ("stsync map reset", "asks first"),
        ("stsync map reset --yes", "in a script"),
    ),
)
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
    """An edit's outcome: a line of talk (stderr); the --json object is the EditResult."""
    app_ctx.result(**result.to_dict())
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
