"""The Typer application: global options, command registration, error → exit code.

Command modules live in ``stsync/cli/<command>.py`` and expose ``register(app)``. They
import typer and this package at module level only; services, clients and the sandbox are
imported inside the command function so that ``stsync --version`` stays fast.

``run(argv)`` is one invocation: it creates the invocation's ``AppContext`` (Typer's root
``obj``), runs the command, turns every failure into its exit code with one rendering —
``Error: … → hint`` on stderr, and with ``--json`` one error object on stdout — usage
errors included (exit 2, the hint naming the usage line and ``--help``), and closes the
context. ``stsync demo`` calls ``run`` for each of its steps: each is an invocation of its
own.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
from typing import Any

import typer

from stsync import __version__, envvars
from stsync.cli.choices import choice
from stsync.cli.context import AppContext
from stsync.cli.help import examples, tidy_help
from stsync.errors import Interrupted, StsyncError, UsageError
from stsync.vocabulary import LogFormat

# Order is the order of `stsync --help`, panel by panel (cli.help: Setup, Everyday, Support,
# Tools); a command module names its panel when it registers.
COMMAND_MODULES = (
    "connect",
    "map",
    "validate",
    "push_lead",
    "sync_customers",
    "qualify",
    "report",
    "run",
    "serve",
    "diagnose",
    "history",
    "notify",
    "status",
    "demo",
    "sandbox",
)

LOG_FORMAT_WORD = choice(LogFormat)

app = typer.Typer(
    name="stsync",
    help="Connect a Referral Factory referral campaign to ServiceTitan.",
    epilog=examples(
        ("stsync demo", "the whole job against a local simulator, no credentials"),
        ("stsync connect", "then `stsync map show` and `stsync validate --online`"),
        ("stsync push-lead --new", "book every new referred lead"),
        ("stsync diagnose", "the troubleshooting checklist"),
        ("stsync COMMAND --help", "each command's options and examples"),
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"stsync {__version__}\n")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, "--config", metavar="PATH", help=f"Config file of the connection (TOML). \\[env var: {envvars.CONFIG.name}]"
    ),
    json_: bool = typer.Option(
        False, "--json", help="Print one JSON object on stdout (docs/json.md); everything for people goes to stderr."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail (-vv for HTTP traffic)."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="One summary line and every failure (data commands still print their data)."
    ),
    log_format: LogFormat | None = typer.Option(
        None,
        "--log-format",
        parser=LOG_FORMAT_WORD,
        help="How the log file is written: text, or json (one object per line; also on stderr under run and serve). "
        f"\\[env var: {envvars.LOG_FORMAT.name}; config: logging.format]",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    app_ctx = AppContext.from_typer(ctx)
    _apply_global_options(app_ctx, ctx.params)


def _apply_global_options(app_ctx: AppContext, params: dict[str, Any]) -> None:
    """The callback's parameters (by their Python names) onto the invocation's context."""
    app_ctx.set_global_options(
        config_option=params.get("config"),
        json_mode=bool(params.get("json_")),
        verbosity=int(params.get("verbose") or 0),
        quiet=bool(params.get("quiet")),
        log_format=str(params["log_format"].value) if params.get("log_format") else None,
    )


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"stsync.cli.{name}").register(app)


_register_commands()


def build_command() -> Any:
    """The Click command tree Typer builds from ``app``, its help tidied (``cli.help``): what
    one invocation runs."""
    from typer.main import get_command

    command = get_command(app)
    tidy_help(command)
    return command


# What a shell reports for a process whose output pipe closed (128 + SIGPIPE), as for
# `git log | head`: the reader had enough; everything done so far is recorded.
BROKEN_PIPE_EXIT = 141


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and turns every failure into its exit code."""
    try:
        code = run(argv, whole_process=True)
        sys.stdout.flush()
    except BrokenPipeError:
        code = _stdout_gone()
    # The process ends here and what it holds needs no collecting: frozen, it is skipped by
    # the interpreter's last collections (about 0.15 s after a 1,000-lead push).
    gc.freeze()
    sys.exit(code)


def _stdout_gone() -> int:
    """The reader of stdout went away (`stsync history | head`): stop writing there, quietly.
    Later writes, and the interpreter's last flush, go to /dev/null instead of raising."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_EXIT


def run(argv: list[str] | None = None, *, whole_process: bool = False) -> int:
    """One invocation of stsync (the console script, the tests, each step of ``stsync demo``):
    its exit code; nothing is raised. With ``--json``, stdout gets exactly one object, the
    envelope (``cli.envelope``), however the invocation ended; a run command's outcome is
    recorded and reported first (``AppContext.finish_job``). ``whole_process``: this
    invocation is the process (the console script), see ``AppContext``."""
    command = build_command()
    global_args, command_args = split_global_options(sys.argv[1:] if argv is None else list(argv), command)
    args = [*global_args, *command_args]
    with AppContext(whole_process=whole_process) as app_ctx:
        app_ctx.preset_json_mode("--json" in global_args)
        named = _context_of(args, command)
        app_ctx.command_name = command_name(named)
        if app_ctx.json_mode and _group_alone(named, args):
            # Click would print the group's help on stdout, where the JSON object goes.
            hint = f"{named.get_usage()} (try '{named.command_path} --help')"
            code, error = _report(app_ctx, UsageError("Missing command.", hint=hint)), None
        else:
            code, error = _invoke(app_ctx, command, args)
        app_ctx.finish_job(code, error)
        app_ctx.finish(code, None)
        return code


def _invoke(app_ctx: AppContext, command: Any, args: list[str]) -> tuple[int, BaseException | None]:
    """Run the command: its exit code, and the failure behind it for a run's record (None for
    a clean exit, a usage error or Ctrl-C). Every failure is rendered, and recorded on
    ``app_ctx`` (``reported_error``) for the JSON object."""
    try:
        # Not standalone: failures come back here, to be rendered in one style.
        result = command.main(args=args, prog_name="stsync", standalone_mode=False, obj=app_ctx)
        code = result if isinstance(result, int) else 0
        if code == Interrupted.exit_code and app_ctx.reported_error is None:
            # Typer turns Ctrl-C (KeyboardInterrupt) into a bare exit 130: say what it means.
            return _report(app_ctx, Interrupted()), None
        return code, None
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # Typer turns a closed stdout into exit 1
            return _stdout_gone(), None
        return (exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)), None
    except typer.Abort:
        # Ctrl-C (or end of input) at a prompt: like Ctrl-C anywhere, one line and 130.
        # Prompts come before any change, so nothing was done.
        return _report(app_ctx, Interrupted("interrupted at a prompt; nothing was changed", hint=None)), None
    except KeyboardInterrupt:
        return _report(app_ctx, Interrupted()), None
    except BrokenPipeError:
        return _stdout_gone(), None
    except typer.TyperException as exc:  # Click's usage errors (typer vendors click)
        return _report_usage_error(app_ctx, exc, args, command), None
    except StsyncError as exc:
        return _report(app_ctx, exc), exc
    except Exception as exc:  # a bug: short message here, the trace in the log file
        from stsync.storage.paths import is_machine_error, state_unusable

        if is_machine_error(exc):
            # The machine cannot keep a file (full disk, read-only, a file in the way): the
            # user's to fix, not a bug.
            unusable = state_unusable(exc, exc.filename or app_ctx.state_dir())
            return _report(app_ctx, unusable), unusable
        log_file = app_ctx.log_bug(exc)
        where = f" (details in {log_file})" if log_file else ""
        bug = StsyncError(
            f"unexpected error: {type(exc).__name__}{where}", hint="this is a bug in stsync; please report it with the log file"
        )
        app_ctx.terminal.error(bug.message, bug.hint)
        app_ctx.reported_error = bug.to_dict()
        return 1, exc


def command_name(ctx: Any) -> str | None:
    """``stsync map show`` → ``map show``: how the envelope names a command; None for the
    bare program (no command, or one that does not exist)."""
    path = str(ctx.command_path)
    name = path.partition(" ")[2]
    return name or None


def _report(app_ctx: AppContext, exc: StsyncError) -> int:
    logging.getLogger("stsync").info("exit %s: %s", exc.exit_code, exc)
    app_ctx.reported_error = exc.to_dict()
    app_ctx.terminal.error(str(exc), exc.hint)
    return exc.exit_code


def _report_usage_error(app_ctx: AppContext, exc: typer.TyperException, args: list[str], command: Any) -> int:
    """A Click usage error reported as stsync's own: its message, then the usage line and
    --help as the hint."""
    from typer._click.exceptions import NoArgsIsHelpError

    if isinstance(exc, NoArgsIsHelpError):
        return exc.exit_code  # `stsync` or `stsync map` alone: Click printed the help
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and not app_ctx.global_options_set:
        # The command line failed before the callback ran (an unknown command): its global
        # options were parsed all the same.
        _apply_global_options(app_ctx, ctx.find_root().params)
    # Click's parser leaves out the context of some errors (an option without its value).
    ctx = ctx or _context_of(args, command)
    hint = f"{ctx.get_usage()} (try '{ctx.command_path} --help')"
    error = UsageError if exc.exit_code == UsageError.exit_code else StsyncError
    # Typer words a refused value "Invalid value for '--for': Value error, …": the middle goes.
    message = exc.format_message().replace(": Value error, ", ": ")
    return _report(app_ctx, error(message, hint=hint))


def _context_of(args: list[str], command: Any) -> Any:
    """A Click context of the (sub)command ``args`` name, for its usage line. The global
    options are in front (``hoist_global_options``), and only groups lead to subcommands."""
    from typer.core import TyperGroup

    root_options = _options(command)
    ctx = command.context_class(command, info_name="stsync")
    current, i = command, 0
    while isinstance(current, TyperGroup) and i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            if current is not command:
                break
            option = root_options.get(arg)
            i += 1 + (option.nargs if option is not None and _takes_value(option) else 0)
            continue
        if arg not in current.commands:
            break
        current = current.commands[arg]
        ctx = current.context_class(current, info_name=arg, parent=ctx)
        i += 1
    return ctx


def _group_alone(ctx: Any, args: list[str]) -> bool:
    """Does the command line end at a group (``stsync map``), naming none of its commands?"""
    from typer.core import TyperGroup

    return isinstance(ctx.command, TyperGroup) and ctx.parent is not None and bool(args) and args[-1] == ctx.info_name


def _options(command: Any) -> dict[str, Any]:
    """A Click command's options by each of their names (``--quiet``, ``-q``)."""
    from typer.core import TyperOption

    return {name: p for p in command.params if isinstance(p, TyperOption) for name in (*p.opts, *p.secondary_opts)}


def _takes_value(option: Any) -> bool:
    return not (option.is_flag or option.count)


def hoist_global_options(argv: list[str], command: Any) -> list[str]:
    """``argv`` with its global options moved in front (``split_global_options``)."""
    global_args, command_args = split_global_options(argv, command)
    return [*global_args, *command_args]


def split_global_options(argv: list[str], command: Any) -> tuple[list[str], list[str]]:
    """Accept global options after the command too: `stsync push-lead --new --json`.

    Scripts write options where they read best; Typer only knows them before the command.
    The global options (the root's own, not eager: ``--config``, ``--json``, ``-v``, ``-q``)
    are taken out in their order, with their value, to go in front of the rest. What they are, which command an
    argument belongs to and which options take a value are read from ``command``, the Click
    tree Typer builds, so the value of an option is never mistaken for a flag
    (``map set summary --value -q``), and a command's own option of the same name stays
    where it is. Nothing after a bare ``--`` is touched.
    """
    from typer.core import TyperGroup

    def lookup(table: dict[str, Any], arg: str) -> tuple[Any, bool]:
        """The option ``arg`` names in ``table``, and whether ``arg`` carries its value."""
        if arg.startswith("--"):
            name, eq, _ = arg.partition("=")
            return table.get(name), bool(eq)
        option = table.get(arg[:2])
        return option, len(arg) > 2 and option is not None and _takes_value(option)

    root_options = {name: p for name, p in _options(command).items() if p.expose_value and not p.is_eager}

    def global_cluster(arg: str) -> Any:
        """The first option of `-vv` or `-qv` (global short flags in one argument), else None."""
        if arg.startswith("--") or len(arg) <= 2:
            return None
        flags = [root_options.get(f"-{c}") for c in arg[1:]]
        return flags[0] if all(f is not None and not _takes_value(f) for f in flags) else None

    current = command
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            kept.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            kept.append(arg)
            if isinstance(current, TyperGroup) and arg in current.commands:
                current = current.commands[arg]
            i += 1
            continue
        option, value_attached = lookup(_options(current), arg) if current is not command else (None, False)
        target = kept
        if option is None:
            option, value_attached = lookup(root_options, arg)
            option = option or global_cluster(arg)
            target = moved if option is not None else kept
        target.append(arg)
        if option is not None and _takes_value(option) and not value_attached:
            target.extend(argv[i + 1 : i + 1 + option.nargs])
            i += option.nargs
        i += 1
    return moved, kept

