"""The Typer application: global options, command registration, error → exit code.

Command modules live in ``stsync/cli/<command>.py`` and expose ``register(app)``. They
import typer and this package at module level only; services, clients and the sandbox are
imported inside the command function so that ``stsync --version`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Optional

import typer

from stsync import __version__, envvars
from stsync.cli.context import AppContext
from stsync.errors import StsyncError

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
    config: Optional[str] = typer.Option(
        None, "--config", help=f"Config file of the connection (TOML). \\[env var: {envvars.CONFIG.name}]"
    ),
    json_: bool = typer.Option(False, "--json", help="Print one JSON object on stdout; human output stays on stderr."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More detail (-vv for HTTP traffic)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors, warnings and the closing summary."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    ctx.obj = AppContext(config_option=config, json_mode=json_, verbosity=verbose, quiet=quiet)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"stsync.cli.{name}") is None:  # DEV-ONLY guard while commands land
            continue
        module = importlib.import_module(f"stsync.cli.{name}")
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and turns every failure into its exit code."""
    code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    from stsync.cli.terminal import Terminal

    depth = AppContext.depth()
    try:
        # Standalone mode lets Typer render usage errors (exit 2) and --help itself.
        app(args=hoist_global_options(sys.argv[1:] if argv is None else list(argv)), prog_name="stsync", standalone_mode=True)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        Terminal().error("interrupted; everything done so far is recorded, run the command again to resume")
        return 130
    except StsyncError as exc:
        ctx = AppContext.current()
        terminal = ctx.terminal if ctx else Terminal()
        logging.getLogger("stsync").info("exit %s: %s", exc.exit_code, exc)
        if ctx is not None and ctx.json_mode and not ctx.json_emitted:
            terminal.data({"ok": False, "exit_code": exc.exit_code, "error": _error_object(exc)})
        terminal.error(str(exc), exc.hint)
        return exc.exit_code
    except Exception as exc:  # a bug: short message here, the trace in the log file
        ctx = AppContext.current()
        log_file = ctx.log_bug(exc) if ctx else None
        where = f" (details in {log_file})" if log_file else ""
        Terminal().error(f"unexpected error: {type(exc).__name__}{where}", "this is a bug in stsync; please report it with the log file")
        return 1
    finally:
        AppContext.reset(depth)


_GLOBAL_FLAGS = {"--json", "-q", "--quiet", "-v", "-vv", "-vvv", "--verbose"}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Accept global options after the command too: `stsync push-lead --new --json`.

    Scripts write options where they read best; Typer only knows them before the command.
    Global flags (and `--config PATH` / `--config=PATH`) move to the front in their order;
    nothing after a bare `--` is touched.
    """
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            kept.extend(argv[i:])
            break
        if arg in _GLOBAL_FLAGS or arg.startswith("--config="):
            moved.append(arg)
        elif arg == "--config" and i + 1 < len(argv):
            moved.extend(argv[i : i + 2])
            i += 1
        else:
            kept.append(arg)
        i += 1
    return [*moved, *kept]


def _error_object(exc: StsyncError) -> dict:
    obj: dict = {"type": type(exc).__name__, "message": str(exc)}
    if exc.hint:
        obj["hint"] = exc.hint
    to_dict = getattr(exc, "to_dict", None)
    if callable(to_dict):
        obj["remote"] = to_dict()
    missing = getattr(exc, "missing", None)
    if missing:
        obj["missing"] = missing
    key_path = getattr(exc, "key_path", None)
    if key_path:
        obj["key_path"] = key_path
    return obj
