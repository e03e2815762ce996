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
import sys
from typing import Any

import typer

from stsync import __version__, envvars
from stsync.cli.context import AppContext
from stsync.errors import StsyncError, UsageError
from stsync.vocabulary import LogFormat

# Order is the order of `stsync --help`.
COMMAND_MODULES = (
    "demo",
    "connect",
    "map",
    "validate",
    "push_lead",
    "sync_customers",
    "qualify",
    "diagnose",
    "history",
    "serve",
    "run",
    "status",
    "notify",
    "sandbox",
)

app = typer.Typer(
    name="stsync",
    help="Connect a Referral Factory referral campaign to ServiceTitan.",
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
        None, "--config", help=f"Config file of the connection (TOML). \\[env var: {envvars.CONFIG.name}]"
    ),
    json_: bool = typer.Option(False, "--json", help="Print one JSON object on stdout; human output stays on stderr."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail (-vv for HTTP traffic)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors, warnings and the closing summary."),
    log_format: LogFormat | None = typer.Option(
        None,
        "--log-format",
        case_sensitive=False,
        help="How the log file is written: text, or json (one object per line; also on stderr under run and serve). "
        f"\\[env var: {envvars.LOG_FORMAT.name}; config: logging.format]",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    app_ctx = AppContext.from_typer(ctx)
    _apply_global_options(app_ctx, ctx.params)
    app_ctx.command_name = ctx.invoked_subcommand


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and turns every failure into its exit code."""
    code = run(argv, whole_process=True)
    # The process ends here and what it holds needs no collecting: frozen, it is skipped by
    # the interpreter's last collections (about 0.15 s after a 1,000-lead push).
    gc.freeze()
    sys.exit(code)


def run(argv: list[str] | None = None, *, whole_process: bool = False) -> int:
    """One invocation of stsync (the console script, the tests, each step of ``stsync demo``):
    its exit code; nothing is raised. A run command's outcome is recorded and reported
    (``AppContext.finish_job``) before the context closes. ``whole_process``: this invocation
    is the process (the console script), see ``AppContext``."""
    from typer.main import get_command

    command = get_command(app)
    args = hoist_global_options(sys.argv[1:] if argv is None else list(argv), command)
    with AppContext(whole_process=whole_process) as app_ctx:
        code, error = _invoke(app_ctx, command, args)
        app_ctx.finish_job(code, error)
        return code


def _invoke(app_ctx: AppContext, command: Any, args: list[str]) -> tuple[int, BaseException | None]:
    """The command's exit code, and the failure behind it (None for a clean exit)."""
    try:
        # Not standalone: failures come back here, to be rendered in one style.
        result = command.main(args=args, prog_name="stsync", standalone_mode=False, obj=app_ctx)
        return (result if isinstance(result, int) else 0), None
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)), None
    except typer.Abort:
        # Ctrl-C (or end of input) at a prompt: like Ctrl-C anywhere, one line and 130.
        # Prompts come before any change, so nothing was done.
        app_ctx.terminal.error("interrupted at a prompt; nothing was changed")
        return 130, None
    except KeyboardInterrupt:
        app_ctx.terminal.error("interrupted; everything done so far is recorded, run the command again to resume")
        return 130, None
    except typer.TyperException as exc:  # Click's usage errors (typer vendors click)
        return _report_usage_error(app_ctx, exc, args, command), None
    except StsyncError as exc:
        return _report(app_ctx, exc), exc
    except Exception as exc:  # a bug: short message here, the trace in the log file
        log_file = app_ctx.log_bug(exc)
        where = f" (details in {log_file})" if log_file else ""
        app_ctx.terminal.error(
            f"unexpected error: {type(exc).__name__}{where}", "this is a bug in stsync; please report it with the log file"
        )
        return 1, exc


def _report(app_ctx: AppContext, exc: StsyncError) -> int:
    logging.getLogger("stsync").info("exit %s: %s", exc.exit_code, exc)
    app_ctx.emit({"ok": False, "exit_code": exc.exit_code, "error": exc.to_dict()})
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
        # options were parsed all the same, and --json still gets its object.
        _apply_global_options(app_ctx, ctx.find_root().params)
    # Click's parser leaves out the context of some errors (an option without its value).
    ctx = ctx or _context_of(args, command)
    hint = f"{ctx.get_usage()} (try '{ctx.command_path} --help')"
    error = UsageError if exc.exit_code == UsageError.exit_code else StsyncError
    return _report(app_ctx, error(exc.format_message(), hint=hint))


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


def _options(command: Any) -> dict[str, Any]:
    """A Click command's options by each of their names (``--quiet``, ``-q``)."""
    from typer.core import TyperOption

    return {name: p for p in command.params if isinstance(p, TyperOption) for name in (*p.opts, *p.secondary_opts)}


def _takes_value(option: Any) -> bool:
    return not (option.is_flag or option.count)


def hoist_global_options(argv: list[str], command: Any) -> list[str]:
    """Accept global options after the command too: `stsync push-lead --new --json`.

    Scripts write options where they read best; Typer only knows them before the command.
    The global options (the root's own, not eager: ``--config``, ``--json``, ``-v``, ``-q``)
    move to the front in their order, with their value. What they are, which command an
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
    return [*moved, *kept]

