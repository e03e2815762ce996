"""What every command receives: the global options, the terminal, and lazy access to the
connection (config, state paths, secrets, clients, ledger).

One ``AppContext`` per invocation (hatch's ``Application``): ``cli.app.run`` creates it,
hands it to Typer as the root context's ``obj`` (commands reach it with
``AppContext.from_typer(ctx)``), renders failures through it and closes it — its connection
and the log file it attached — whatever happens. A run inside a command (``stsync demo``'s
steps) is another invocation with a context of its own; nothing is shared through class
state.

Output: ``terminal`` writes for people (data on stdout, talk on stderr: ``cli.terminal``);
``result`` records what the command's ``--json`` object says, and ``cli.app.run`` writes that
object once, in the envelope (``cli.envelope``), when the invocation ends.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.envelope import CommandOutput, envelope
from stsync.cli.terminal import Terminal
from stsync.storage.paths import ConnectionPaths, resolve_config_path

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.errors import StsyncError
    from stsync.services.job_outcome import JobInvocation
    from stsync.storage.config import Config


class AppContext:
    """Defaults until ``set_global_options`` (the app's callback) applies the command line.

    ``whole_process``: the invocation is the whole process (the console script, not a test
    or a demo step calling ``run``). Then what is loaded when the connection opens — the
    command's modules, the config, the clients — lives until the process ends, and is frozen
    out of the garbage collector's reach (``gc.freeze``): a full collection walking it took
    about 90 ms in the middle of a push, every worker waiting. In a process that goes on after
    the invocation (the tests, ``stsync demo``'s steps) freezing would keep whatever garbage
    cycles it caught for ever, so only the console script freezes.
    """

    def __init__(self, *, whole_process: bool = False) -> None:
        self.whole_process = whole_process
        self.config_option: str | None = None
        self.json_mode = False
        self.verbosity = 0
        self.quiet = False
        self.terminal = Terminal()
        self.global_options_set = False
        self.json_emitted = False
        # The command path without "stsync" ("map show"), set by cli.app.run from the command
        # line; None when it names no command.
        self.command_name: str | None = None
        self.output: CommandOutput | None = None
        # The failure a command reported without raising it (``exit_with``).
        self.reported_error: dict[str, Any] | None = None
        self._connection: Connection | None = None
        self._attached_log = False
        self.log_format_option: str | None = None
        self._job: JobInvocation | None = None
        self._config: Config | None = None

    def set_global_options(
        self, *, config_option: str | None, json_mode: bool, verbosity: int, quiet: bool, log_format: str | None = None
    ) -> None:
        """Apply ``--config``, ``--json``, ``-v``, ``-q`` and ``--log-format`` (before any command work)."""
        self.config_option = config_option
        json_mode = json_mode or self.json_mode  # preset from the command line (preset_json_mode)
        self.json_mode = json_mode
        self.verbosity = verbosity
        self.quiet = quiet
        self.log_format_option = log_format
        self.terminal = Terminal(verbosity=verbosity, quiet=quiet, json_mode=json_mode)
        self.global_options_set = True

    def preset_json_mode(self, json_mode: bool) -> None:
        """``--json`` read off the command line before Click parses it: a command line that
        fails to parse still gets its JSON object (and its terminal knows stdout is taken)."""
        if json_mode and not self.json_mode:
            self.json_mode = True
            self.terminal = Terminal(verbosity=self.verbosity, quiet=self.quiet, json_mode=True)

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
        from stsync.logs import attach_file_handler, bind

        attach_file_handler(
            paths, verbosity=self.verbosity, terminal_stream=self.terminal.err.file, log_format=self.log_format(None)
        )
        bind(command=self.command_name)
        self._attached_log = True

    def log_format(self, config: Config | None) -> str:
        """``--log-format`` > ``STSYNC_LOG_FORMAT`` > ``[logging] format`` > text."""
        from stsync import envvars
        from stsync.errors import UsageError
        from stsync.vocabulary import LogFormat

        configured = str(config.logging.format) if config is not None else None
        chosen = envvars.resolve(envvars.LOG_FORMAT, option=self.log_format_option, configured=configured, default=LogFormat.TEXT)
        if chosen not in tuple(LogFormat):
            raise UsageError(
                f"{envvars.LOG_FORMAT.name}={chosen!r} is not a log format", hint=f"use one of: {', '.join(LogFormat)}"
            )
        return str(chosen)

    def load_config(self) -> Config:
        """The config, and a warning for each limit above what the services document."""
        from stsync.storage.config import limit_warnings, load_config

        config = load_config(self.config_path)
        self._config = config
        for warning in limit_warnings(config):
            self.terminal.warning(warning)
        if self._attached_log:
            from stsync.logs import set_log_format

            set_log_format(self.log_format(config))
        return config

    def log_to_stderr(self) -> None:
        """Long-running commands (run, serve) with the json format: the log's JSON lines go to
        stderr as well, and the terminal's own messages become such lines (a container's log
        collector reads one format)."""
        from stsync.logs import attach_stderr

        if self.log_format(self._config) == "json":
            attach_stderr(self.terminal.err.file)
            self.terminal.structured = True

    @property
    def is_default_config(self) -> bool:
        """The platform's config file (then a command to run needs no ``--config``)."""
        from stsync.storage.paths import default_config_path

        return self.config_path.expanduser().resolve() == default_config_path().resolve()

    # -- a run command's outcome --------------------------------------------------------
    def begin_job(self, job: str, command: str, *, scheduled: bool = False) -> None:
        """This invocation is a run of ``job`` (not a dry run): its exit code is recorded, the
        alerts look at it, a scheduled job pings (``services.job_outcome``)."""
        from stsync.services.job_outcome import JobInvocation

        def config() -> Config | None:
            return self._config if self._config is not None else self.load_config()

        self._job = JobInvocation(
            self.paths,
            job=job,
            command=command,
            scheduled=scheduled,
            config=config,
            default_config=self.is_default_config,
        )
        self._job.begin()

    def finish_job(self, exit_code: int, error: BaseException | None) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.finish(exit_code, error)

    def connection(self, *, config: Config | None = None) -> Connection:
        """The open connection (config + secrets + clients + ledger), built once."""
        if self._connection is None:
            from stsync.connection import Connection

            if config is not None:
                self._config = config
            # Loaded once per invocation (begin_job may have read it): its warnings said once.
            self._connection = Connection.open(self.paths, config or self._config or self.load_config())
            if self.whole_process:
                gc.freeze()
        return self._connection

    def consent(self) -> Callable[[str], bool] | None:
        """How a check asks the person at the terminal a yes/no question (default no); None
        when nobody can answer (no terminal, --json): then the answer is no."""
        if self.json_mode or not self.terminal.can_ask:
            return None

        def ask(question: str) -> bool:
            return bool(typer.confirm(question, default=False, err=True))

        return ask

    # -- output -----------------------------------------------------------------------
    def result(
        self,
        *,
        counts: dict[str, int] | None = None,
        failures: list[dict[str, Any]] | None = None,
        **data: Any,
    ) -> None:
        """What this command's ``--json`` object says (the envelope adds how it ended).

        Record it before raising the command's error: the object then carries both the
        results and the error (a batch with failures, exit 5).
        """
        self.output = CommandOutput(counts=dict(counts or {}), failures=list(failures or []), data=data)

    def exit_with(self, error: StsyncError) -> typer.Exit:
        """A failure the command has already shown in its own report (a FAIL row, a summary):
        the ``--json`` object gets it as its error, and no ``Error:`` line repeats it. Raise
        what this returns."""
        self.reported_error = error.to_dict()
        return typer.Exit(error.exit_code)

    def emit_now(self) -> None:
        """Write the ``--json`` object now, as a success, for a command that goes on running
        (``sandbox``: a script waits for this object, then uses the sandbox)."""
        self.finish(0, None)

    def finish(self, exit_code: int, error: dict[str, Any] | None) -> None:
        """Write the one ``--json`` object, if ``--json`` was given and it is not written yet."""
        if self.json_mode and not self.json_emitted:
            self.json_emitted = True
            self.terminal.data(envelope(self.command_name, exit_code, self.output, error or self.reported_error))

    def state_dir(self) -> Path | None:
        """The connection's state directory, when this invocation got as far as naming it."""
        paths = self.__dict__.get("paths")
        return paths.state if isinstance(paths, ConnectionPaths) else None

    def log_bug(self, exc: BaseException) -> Path | None:
        """Log a bug's trace; the log file it went to, or None when there is none (the state
        dir may be the problem: no message names a file that does not exist)."""
        from stsync.logs import log_file_in_use

        log = logging.getLogger("stsync")
        log.error("unexpected error\n%s", "".join(traceback.format_exception(exc)))
        try:
            _ = self.paths  # attaches the log file, if it can be
        except Exception:
            return None
        return log_file_in_use()
