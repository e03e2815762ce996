"""The support bundle: a diagnose report a customer can attach to a ticket, with no secret in it.

``write_bundle(report, paths, path)`` writes the same content twice — ``<base>.md`` for a
person, ``<base>.json`` for a tool:

- ``path`` an existing directory (or ending in ``/``): ``stsync-diagnose-<connection>-<UTC
  time>.md`` / ``.json`` inside it;
- otherwise ``path`` is the base name: ``support`` → ``support.md`` and ``support.json``
  (a ``.md`` or ``.json`` suffix given is dropped first).

Contents: stsync, Python and OS versions; the connection, config path and state dir; the
config (it never holds a secret; any key that looks like one is dropped anyway); where each
secret comes from (env / keyring / file — never a value); every check; what did not run; the
unbooked push failures with ServiceTitan's exact words; the referral's story when one was
asked for; the last lines of the connection's log file.

Secrets (SPEC §6.6): the three secrets of the connection are read (and registered) before
anything is written, and the whole text of both files passes ``stsync.logs.redact``, so a value
that slipped into an error message or a log line comes out as ``***``. The files are created
0600: they hold customers' e-mails.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from stsync import __version__
from stsync.credentials import SECRET_NAMES
from stsync.errors import UsageError
from stsync.logs import get_logger, redact
from stsync.storage.secrets import SecretStore

if TYPE_CHECKING:
    from stsync.services.diagnose import DiagnoseReport
    from stsync.storage.config import Config
    from stsync.storage.paths import ConnectionPaths

log = get_logger(__name__)

LOG_LINES = 200
# Config keys that would hold a secret if a future version ever put one there.
_SECRET_KEY = re.compile(r"secret|password|passwd|token|api_key|app_key|apikey|credential", re.IGNORECASE)
_STATUS_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def bundle_paths(path: str | os.PathLike[str], *, connection: str, generated_at: str | None = None) -> tuple[Path, Path]:
    """The two files ``write_bundle`` writes for ``path`` (see the module docstring).

    In a directory the names carry ``generated_at`` (the report's UTC time), so asking twice
    for one report gives the same names. Pass the user's text as given: a ``Path`` drops the
    trailing ``/`` that says "a directory, create it"."""
    text = os.fspath(path)
    path = Path(path).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        moment = re.sub(r"[^0-9TZ]", "", generated_at or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
        base = path / f"stsync-diagnose-{connection}-{moment}"
    elif path.suffix.lower() in (".md", ".json"):
        base = path.with_suffix("")
    else:
        base = path
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".json")


def write_bundle(report: DiagnoseReport, paths: ConnectionPaths, path: str | os.PathLike[str]) -> list[Path]:
    """Write the redacted bundle; → the files written (markdown first)."""
    _register_connection_secrets(paths)
    content = bundle_content(report, paths)
    markdown_path, json_path = bundle_paths(path, connection=paths.name, generated_at=report.generated_at)
    markdown = redact(render_markdown(content))
    data = redact(json.dumps(content, indent=2, default=str, ensure_ascii=False)) + "\n"
    try:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        for target, text in ((markdown_path, markdown), (json_path, data)):
            _write_private(target, text)
    except OSError as exc:
        raise UsageError(
            f"cannot write the bundle to {markdown_path.parent}: {exc.strerror or exc}",
            hint="pass --bundle a path in a writable directory",
        ) from None
    log.info("support bundle written: %s, %s", markdown_path, json_path)
    return [markdown_path, json_path]


def bundle_content(report: DiagnoseReport, paths: ConnectionPaths) -> dict[str, Any]:
    """Everything the bundle holds, as one JSON-able object (not yet redacted)."""
    return {
        "bundle": "stsync diagnose",
        "generated_at": report.generated_at,
        "versions": {
            "stsync": __version__,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "os": platform.platform(),
            "executable": sys.executable,
        },
        "connection": report.connection,
        "config_path": report.config_path,
        "state_dir": report.state_dir,
        "offline": report.offline,
        "exit_code": report.exit_code,
        "counts": report.counts(),
        "hint": report.hint,
        "config": scrubbed_config(report.config),
        "secrets": secret_sources(report.secret_sources),
        "checks": [check.to_dict() for check in report.checks],
        "not_run": [item.to_dict() for item in report.not_run],
        "recent_failures": [failure.to_dict() for failure in report.recent_failures],
        "story": report.story.to_dict() if report.story is not None else None,
        "log_file": str(paths.log_file),
        "log_tail": log_tail(paths, LOG_LINES),
    }


def scrubbed_config(config: Config | None) -> dict[str, Any] | None:
    """The config as TOML keys (identity kept: support needs the tenant, provider and campaign),
    without any key that looks like a secret."""
    if config is None:
        return None
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return _drop_secret_keys(data)


def _drop_secret_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_secret_keys(item) for key, item in value.items() if not _SECRET_KEY.search(str(key))}
    if isinstance(value, list):
        return [_drop_secret_keys(item) for item in value]
    return value


def secret_sources(described: dict[str, Any] | None) -> dict[str, Any] | None:
    """``SecretStore.describe()`` reduced to what support needs: backend and sources."""
    if not described:
        return None
    return {
        "backend": described.get("backend"),
        "keyring_usable": described.get("keyring_usable"),
        "keyring_problem": described.get("keyring_problem"),
        "file_store": described.get("file") if described.get("file_exists") else None,
        "file_mode": described.get("file_mode"),
        "sources": {name: (info or {}).get("source") for name, info in (described.get("secrets") or {}).items()},
    }


def log_tail(paths: ConnectionPaths, lines: int) -> list[str]:
    """The last ``lines`` lines of the connection's log (rotated file first), redacted."""
    tail: deque[str] = deque(maxlen=lines)
    for candidate in (paths.log_file.with_name(paths.log_file.name + ".1"), paths.log_file):
        try:
            with candidate.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    tail.append(line.rstrip("\n"))
        except OSError:
            continue
    return [redact(line) for line in tail]


def _register_connection_secrets(paths: ConnectionPaths) -> None:
    """Load the connection's secrets (which registers them for ``redact``), ignoring failures:
    a store that cannot be read cannot leak either."""
    store = SecretStore(paths)
    for name in SECRET_NAMES:
        try:
            store.get(name)
        except Exception:  # an unusable store is what the report is about; never fail the bundle on it
            continue


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


# == markdown ===================================================================================


def _cell(text: Any) -> str:
    """A markdown table cell: one line, pipes escaped."""
    if text is None:
        return ""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def render_markdown(content: dict[str, Any]) -> str:
    versions = content["versions"]
    counts = content["counts"]
    out: list[str] = [
        f"# stsync diagnose — connection `{content['connection']}`",
        "",
        f"Generated {content['generated_at']} · exit code {content['exit_code']} · "
        f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
        + (" · offline (live checks not run)" if content["offline"] else ""),
        "",
        f"**{content['hint']}**",
        "",
        "## Versions",
        "",
        f"- stsync {versions['stsync']}",
        f"- Python {versions['python']} ({versions['implementation']})",
        f"- OS {versions['os']}",
        "",
        "## Checks",
        "",
        "| Status | Check | Result | Fix |",
        "|---|---|---|---|",
    ]
    for check in content["checks"]:
        out.append(
            f"| {_STATUS_MARK.get(check['status'], check['status'])} | {_cell(check['name'])} | "
            f"{_cell(check['message'])} | {_cell(check.get('fix'))} |"
        )
    if content["not_run"]:
        out += ["", "Not run:", ""]
        out += [f"- {item['name']}: {item['reason']}" for item in content["not_run"]]

    out += ["", "## Push failures not booked since", ""]
    if content["recent_failures"]:
        out += [
            "| E-mail | externalId | When | Error (as recorded: ServiceTitan's words when it answered) |",
            "|---|---|---|---|",
        ]
        for failure in content["recent_failures"]:
            out.append(
                f"| {_cell(failure['email'])} | {_cell(failure['external_id'])} | {_cell(failure['at'])} | "
                f"{_cell(failure['error_text'])} |"
            )
    else:
        out.append("None.")

    story = content["story"]
    if story is not None:
        out += ["", f"## Referral `{story['email']}`", ""]
        out += [f"- {line.strip()}" if not line.startswith("  ") else f"  - {line.strip()}" for line in story["summary"]]
        if story["next_steps"]:
            out += ["", "Next steps:", ""]
            out += [f"- {step}" for step in story["next_steps"]]
        out += ["", "```json", json.dumps(story, indent=2, default=str, ensure_ascii=False), "```"]

    out += ["", "## Connection", "", f"- config: `{content['config_path']}`", f"- state: `{content['state_dir']}`"]
    secrets = content["secrets"]
    if secrets:
        sources = ", ".join(f"{name}: {source or 'missing'}" for name, source in secrets["sources"].items())
        out.append(f"- keyring backend: `{secrets['backend']}` (usable: {secrets['keyring_usable']})")
        if secrets.get("keyring_problem"):
            out.append(f"- keyring problem: {secrets['keyring_problem']}")
        out.append(f"- secret sources (values never included): {sources}")
    out += ["", "### Config (no secrets)", ""]
    if content["config"] is None:
        out.append("The config file could not be loaded (see the checks).")
    else:
        out += ["```toml", _toml(content["config"]).rstrip("\n"), "```"]

    out += ["", f"## Last {len(content['log_tail'])} log lines", "", f"From `{content['log_file']}` (secrets redacted).", ""]
    out += ["```", *content["log_tail"], "```", ""]
    return "\n".join(out)


def _toml(data: dict[str, Any]) -> str:
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError):
        return json.dumps(data, indent=2, default=str)
