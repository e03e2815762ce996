"""logs.py: the log file is its owner's only (0600), also after a rotation inside a running
process, and a symlinked log file's target keeps the mode its owner gave it."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat

import pytest

from stsync.logs import attach_file_handler, detach_handlers, get_logger
from stsync.storage.paths import ConnectionPaths


@pytest.fixture
def paths(isolated) -> ConnectionPaths:
    return ConnectionPaths.for_config(isolated / "acme.toml")


@pytest.fixture
def permissive_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_log_file_and_the_ones_rotated_in_a_running_process_are_0600(paths, permissive_umask):
    attach_file_handler(paths)
    try:
        [handler] = [h for h in logging.getLogger("stsync").handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
        handler.maxBytes = 300  # a long `serve` rotates at 2 MB; a few lines do it here
        log = get_logger("stsync.test")
        for line in range(40):
            log.info("line %d %s", line, "x" * 60)
    finally:
        detach_handlers()
    files = sorted(paths.state.glob("stsync.log*"))
    assert [f.name for f in files] == ["stsync.log", "stsync.log.1", "stsync.log.2", "stsync.log.3"]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_a_log_file_left_0644_by_an_older_version_is_made_0600(paths, permissive_umask):
    paths.ensure_state()
    paths.log_file.write_text("an old line\n")
    paths.log_file.chmod(0o644)
    attach_file_handler(paths)
    detach_handlers()
    assert mode(paths.log_file) == 0o600


def test_a_symlinked_log_files_target_is_written_through_and_keeps_its_mode(paths, isolated, permissive_umask):
    target = isolated / "var-log" / "stsync.log"
    target.parent.mkdir()
    target.write_text("")
    target.chmod(0o640)  # e.g. readable by the adm group for a log shipper
    paths.ensure_state()
    paths.log_file.symlink_to(target)
    attach_file_handler(paths)
    try:
        get_logger("stsync.test").info("through the link")
    finally:
        detach_handlers()
    assert paths.log_file.is_symlink()
    assert "through the link" in target.read_text()
    assert mode(target) == 0o640


class DiskFull:
    """A log stream on a disk with 0 bytes free: every write and flush raise ENOSPC."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.flush()


def test_a_full_disk_stops_the_log_file_quietly_also_at_close(paths, capsys):
    from stsync.logs import log_file_in_use

    attach_file_handler(paths)
    assert log_file_in_use() == paths.log_file
    [handler] = [h for h in logging.getLogger("stsync").handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    handler.stream.close()
    handler.stream = DiskFull()
    get_logger("stsync.test").error("this line finds the disk full")
    assert log_file_in_use() is None, "a stopped log file is not named in messages"
    detach_handlers()  # the close flushes: ENOSPC again, and nothing raised
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err and "Traceback" not in captured.err


def test_a_state_dir_that_cannot_hold_the_log_prints_nothing_of_logging(tmp_path, monkeypatch, capsys):
    from stsync.logs import log_file_in_use

    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("STSYNC_STATE_DIR", str(blocker))
    attach_file_handler(ConnectionPaths.for_config(tmp_path / "acme.toml"))
    try:
        assert log_file_in_use() is None
        get_logger("stsync.test").error("unexpected error\nTraceback (most recent call last): ...")
    finally:
        detach_handlers()
    assert capsys.readouterr().err == "", "logging's last resort does not print records on stderr"


def test_a_thread_logging_after_the_log_closed_prints_nothing(paths, capsys):
    """A worker still retrying when the command ended (Ctrl-C) logs after the handlers went:
    its warning must not reach stderr through logging's last resort, after the final error."""
    attach_file_handler(paths)
    detach_handlers()
    logging.getLogger("stsync.http").warning("Referral Factory POST /users: HTTP 503; retry 1 in 0.3 s")
    assert capsys.readouterr().err == ""
