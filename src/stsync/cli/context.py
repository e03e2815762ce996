"""What every command receives: the global options, the terminal, and lazy access to the
connection (config, state paths, secrets, clients, ledger).

One ``AppContext`` per invocation (hatch's ``Application``): ``cli.app.run`` creates it,
hands it to Typer as the root context's ``obj`` (commands reach it with
``AppContext.from_typer(ctx)``), renders failures through it and closes it — its connection
and the log file it attached — whatever happens. A run inside a command (``stsync demo``'s
steps) is another invocation with a context of its own; nothing is shared through class
state.
"""

from __future__ import annotations

import logging
import traceback
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.terminal import Terminal
from stsync.storage.paths import ConnectionPaths, resolve_config_path

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.storage.config import Config


class AppContext:
    """Defaults until ``set_global_options`` (the app's callback) applies the command line."""

    def __init__(self) -> None:
        self.config_option: str | None = None
        self.json_mode = False
        self.verbosity = 0
        self.quiet = False
        self.terminal = Terminal()
        self.global_options_set = False
        self.json_emitted = False
        self._connection: Connection | None = None
        self._attached_log = False

    def set_global_options(self, *, config_option: str | None, json_mode: bool, verbosity: int, quiet: bool) -> None:
        """Apply ``--config``, ``--json``, ``-v`` and ``-q`` (before any command work)."""
        self.config_option = config_option
        self.json_mode = json_mode
        self.verbosity = verbosity
        self.quiet = quiet
        self.terminal = Terminal(verbosity=verbosity, quiet=quiet, json_mode=json_mode)
        self.global_options_set = True

    @staticmethod
    def from_typer(ctx: typer.Context) -> AppContext:
        obj = ctx.find_root().obj
        assert isinstance(obj, AppContext), "commands run through stsync.cli.app.run"
        return obj

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection and detach the log file this invocation opened."""
        connection, self._connection = self._connection, None
        try:
            if connection is not None:
                connection.close()
        finally:
            if self._attached_log:
                from stsync.logs import detach_handlers

                self._attached_log = False
                detach_handlers()

    def __enter__(self) -> AppContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- paths and config -------------------------------------------------------------
    @cached_property
    def config_path(self) -> Path:
        return resolve_config_path(self.config_option)

    @cached_property
    def paths(self) -> ConnectionPaths:
        """The connection's files. The config file claims its connection name in the registry
        first: a second config file going by the same name is refused (``ConnectionInUse``),
        so two configs never share secrets, ledger or state."""
        paths = ConnectionPaths.for_config(self.config_path)
        if paths.config.is_file():
            from stsync.storage.registry import Registry

            Registry(paths.state.parent).claim(paths)
        self._attach_log(paths)
        return paths

    def use_paths(self, paths: ConnectionPaths) -> None:
        """The connection's files as ``connect`` decided them (it names and claims them itself)."""
        self.__dict__["paths"] = paths
        self._attach_log(paths)

    def _attach_log(self, paths: ConnectionPaths) -> None:
        from stsync.logs import attach_file_handler

        attach_file_handler(paths, verbosity=self.verbosity, terminal_stream=self.terminal.err.file)
        self._attached_log = True

    def load_config(self) -> Config:
        """The config, and a warning for each limit above what the services document."""
        from stsync.storage.config import limit_warnings, load_config

        config = load_config(self.config_path)
        for warning in limit_warnings(config):
            self.terminal.warning(warning)
        return config

    def connection(self, *, config: Config | None = None) -> Connection:
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
