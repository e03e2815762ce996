"""Files stsync creates in the state dir are readable by their owner only: every file 0600,
every directory 0700, whatever the umask (SPEC §2; issue 17 item 9).

The state dir holds customer names and e-mails (the ledger), a bearer token, the secrets file
when chosen, and logs. The commands run under a permissive umask (022, a common default), so a
file created without an explicit mode would come out 0644 and fail here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths

pytestmark = pytest.mark.e2e


@pytest.fixture
def permissive_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_every_file_in_the_state_dir_is_0600_and_every_dir_0700(permissive_umask, sandbox_env, cli, isolated):
    sb = sandbox_env
    state = Path(os.environ["STSYNC_STATE_DIR"])
    assert not state.exists()  # stsync creates it, and its parents, itself

    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    assert cli("map", "qualify", "job-created").exit_code == 0
    pushed = cli("-vv", "push-lead", "--new")
    assert pushed.exit_code == 0, str(pushed)
    sb.convert_booking_to_job(sb.bookings()[0]["id"])
    for args in (("qualify",), ("sync-customers", "--once"), ("push-lead", "--new")):
        result = cli(*args)
        assert result.exit_code == 0, str(result)

    paths = ConnectionPaths.for_config(Path(os.environ["STSYNC_CONFIG"]))
    # The ledger's -wal and -shm exist while it is open: look while one is.
    ledger = Ledger.open(paths.ledger)
    try:
        assert ledger.push_counts()  # a read: SQLite opens the WAL and its shared memory
        found = sorted([state, *state.rglob("*")])
        modes = {path: stat.S_IMODE(path.lstat().st_mode) for path in found}
    finally:
        ledger.close()

    names = {path.name for path in found}
    for expected in ("ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm", "stsync.log", "secrets.json",
                     "servicetitan-token.json", "locks"):  # fmt: skip
        assert expected in names, sorted(names)
    assert any(name.startswith("rate-") for name in names) and any(name.endswith(".lock") for name in names), sorted(names)
    wrong = {
        str(path.relative_to(state.parent)): oct(mode)
        for path, mode in modes.items()
        if (path.is_dir() and mode != 0o700) or (not path.is_dir() and mode != 0o600)
    }
    assert wrong == {}, "not private:\n" + "\n".join(f"{mode} {path}" for path, mode in sorted(wrong.items()))
