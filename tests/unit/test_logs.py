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
