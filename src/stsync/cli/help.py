"""Help that teaches: where each command sits in ``stsync --help``, its examples, and option
metavars that say what to type.

- ``SETUP`` / ``EVERYDAY`` / ``SUPPORT`` / ``TOOLS``: the panels of ``stsync --help``; every
  command names one (``rich_help_panel``).
- ``examples(...)``: a command's epilog — ``Examples`` and one ``$ stsync …`` line each, with
  what it does. Every command has one (a test checks).
- ``tidy_help(command)``: applied to the Click tree Typer builds (``cli.app.build_command``),
  for every command, the ones added later included: a flag shows no type (Typer would show
  ``<bool>``), a value shows an upper-case metavar (``TEXT``, ``INTEGER``, ``NUMBER``, ``PATH``)
  instead of ``<str>`` or ``<int range> [x>=1]``, and a closed choice shows its words
  (``<production|integration>``). Parsing and validation are not touched.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

SETUP = "Setup"
EVERYDAY = "Everyday"
SUPPORT = "Support"
TOOLS = "Tools"
PANELS = (SETUP, EVERYDAY, SUPPORT, TOOLS)

_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH"}


def examples(*lines: tuple[str, str]) -> str:
    """An epilog: ``(command, what it does)`` pairs under "Examples". A long command is given
    as several lines (a list joined by ``\\`` continuations) so that it is never wrapped mid-option."""

    def shown(command: str) -> str:
        parts = command.split("\n")
        return " \\\n      ".join(escape(part.strip()) for part in parts)

    body = "\n".join(f"  [cyan]$ {shown(command)}[/]\n      {escape(what)}" for command, what in lines)
    return f"[bold]Examples[/]\n\n{body}"


def tidy_help(command: Any, parent: Any = None) -> None:
    """Metavars that say what to type, on every option and argument of ``command``'s tree
    (its ``--help`` option too, which Click makes on demand)."""
    ctx = command.context_class(command, info_name=command.name, parent=parent, **command.context_settings)
    help_option = command.get_help_option(ctx)
    for param in [*getattr(command, "params", ()), *([help_option] if help_option is not None else [])]:
        _tidy(param)
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub, ctx)


def _no_type(ctx: Any) -> None:
    return None


def _tidy(param: Any) -> None:
    from typer.core import TyperArgument, TyperOption

    # The range is still enforced (Typer checks it while converting); only its "[x>=1]" goes.
    param.min = param.max = None
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        param.metavar = ""
        param.show_default = False if param.count else param.show_default
        return
    if param.metavar is not None or param.type_descriptor.is_choice:
        if isinstance(param, TyperArgument) and not param.type_descriptor.is_choice:
            # An argument shows its metavar as its name already; Typer would add "<str>" beside
            # it. Only this parameter object, built for this invocation, is changed.
            object.__setattr__(param, "display_type_rich", _no_type)
        return
    annotation = param.type_descriptor.annotation
    inner = getattr(annotation, "__args__", None)
    name = getattr((inner or (annotation,))[0], "__name__", "")
    metavar = _METAVARS.get(name)
    if metavar is not None and isinstance(param, TyperOption):
        param.metavar = metavar
