"""What every command receives: the global options, the terminal, and lazy access to the
connection (config, state paths, secrets, clients, ledger).

Built once per invocation (hatch's ``Application``); commands reach it with
``AppContext.from_typer(ctx)``.
"""

from __future__ import annotations

import logging
import traceback
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import typer

from stsync.cli.terminal import Terminal
from stsync.storage.paths import ConnectionPaths, resolve_config_path

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.storage.config import Config


class AppContext:
    # A stack, not a single slot: `stsync demo` runs real commands inside its own command.
    _stack: ClassVar[list["AppContext"]] = []

    def __init__(self, *, config_option: str | None, json_mode: bool, verbosity: int, quiet: bool) -> None:
        self.config_option = config_option
        self.json_mode = json_mode
        self.verbosity = verbosity
        self.quiet = quiet
        self.json_emitted = False
        self.terminal = Terminal(verbosity=verbosity, quiet=quiet, json_mode=json_mode)
        self._connection: Connection | None = None
        AppContext._stack.append(self)

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    def current(cls) -> "AppContext | None":
        return cls._stack[-1] if cls._stack else None

    @classmethod
    def depth(cls) -> int:
        return len(cls._stack)

    @classmethod
    def reset(cls, depth: int = 0) -> None:
        """Close the contexts opened above ``depth`` (the invocation's own), newest first."""
        while len(cls._stack) > depth:
            current = cls._stack.pop()
            if current._connection is not None:
                current._connection.close()
                current._connection = None
        if depth == 0:
            from stsync.logs import detach_handlers

            detach_handlers()

    @staticmethod
    def from_typer(ctx: typer.Context) -> "AppContext":
        obj = ctx.find_root().obj
        assert isinstance(obj, AppContext)
        return obj

    # -- paths and config -------------------------------------------------------------
    @cached_property
    def config_path(self) -> Path:
        return resolve_config_path(self.config_option)

    @cached_property
    def paths(self) -> ConnectionPaths:
        paths = ConnectionPaths.for_config(self.config_path)
        from stsync.logs import attach_file_handler

        attach_file_handler(paths, verbosity=self.verbosity, terminal_stream=self.terminal.err.file)
        return paths

    def load_config(self) -> "Config":
        from stsync.storage.config import load_config

        return load_config(self.config_path)

    def connection(self, *, config: "Config | None" = None) -> "Connection":
        """The open connection (config + secrets + clients + ledger), built once."""
        if self._connection is None:
            from stsync.connection import Connection

            self._connection = Connection.open(self.paths, config or self.load_config())
        return self._connection

    # -- output -----------------------------------------------------------------------
    def emit(self, obj: dict[str, Any]) -> None:
        """The command's one JSON object on stdout, when ``--json`` was given."""
        if self.json_mode and not self.json_emitted:
            self.json_emitted = True
            self.terminal.data(obj)

    def log_bug(self, exc: BaseException) -> Path | None:
        log = logging.getLogger("stsync")
        log.error("unexpected error\n%s", "".join(traceback.format_exception(exc)))
        try:
            return self.paths.log_file
        except Exception:  # the state dir itself may be the problem
            return None
