"""The real CLI on a pseudo-terminal: what a person at a terminal sees, types and interrupts.

``TerminalSession(*args)`` starts ``python -m stsync ARGS`` in a new session whose controlling
terminal is a fresh pty, so that prompts, hidden input (getpass reads /dev/tty) and Ctrl-C
(``interrupt()`` types ^C: the terminal sends SIGINT) behave as they do for a person. Standard
input and standard error are the terminal; standard output is a pipe of its own (``stdout``
after ``wait``), so a test can tell the streams apart.

The child takes its controlling terminal itself (a small trampoline execs the CLI), so the
test process never runs code between fork and exec — safe with the sandbox's threads.
``expect`` waits for text (or a regex) on the terminal and fails with the transcript so far;
``transcript`` is everything shown, ANSI sequences removed.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from re import Pattern

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
TRAMPOLINE = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'stsync', *sys.argv[1:]])"
)
COLUMNS, ROWS = 200, 50


class TerminalSession:
    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.timeout = timeout
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        environ = dict(os.environ if env is None else env)
        environ.update({"COLUMNS": str(COLUMNS), "NO_COLOR": "1", "TERM": environ.get("TERM") or "xterm"})
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, *[str(a) for a in args]],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=environ,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self._raw = ""
        self._seen = 0  # how much of the transcript ``expect`` has consumed
        self.stdout = ""
        self.exit_code: int | None = None

    # -- reading ----------------------------------------------------------------------
    @property
    def transcript(self) -> str:
        return ANSI.sub("", self._raw).replace("\r\n", "\n").replace("\r", "")

    def _read(self, wait: float) -> bool:
        """Read what the terminal has within ``wait`` seconds; False at end of output."""
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer of the terminal has gone
            return False
        if not chunk:
            return False
        self._raw += chunk.decode("utf-8", errors="replace")
        return True

    def expect(self, pattern: str | Pattern[str], timeout: float | None = None) -> str:
        """Wait until ``pattern`` (text or regex) appears after what earlier calls consumed;
        → the transcript up to and including it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        while True:
            text = self.transcript
            match = regex.search(text, self._seen)
            if match:
                self._seen = match.end()
                return text[: match.end()]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {regex.pattern!r}; the terminal shows:\n{text}")
            if not self._read(0.1) and self.process.poll() is not None:
                text = self.transcript
                if regex.search(text, self._seen):
                    continue
                raise AssertionError(
                    f"the command exited {self.process.returncode} before {regex.pattern!r}; the terminal shows:\n{text}"
                )

    # -- typing -----------------------------------------------------------------------
    def send(self, text: str) -> None:
        os.write(self.master, text.encode("utf-8"))

    def sendline(self, text: str = "") -> None:
        self.send(text + "\r")  # the Enter key: the terminal turns it into a newline

    def interrupt(self) -> None:
        """Ctrl-C, typed: the terminal sends SIGINT to the command."""
        self.send("\x03")

    # -- the end ----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command to exit, collecting the rest of what it shows. → exit code."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the command did not exit; the terminal shows:\n{self.transcript}")
            self._read(0.1)
        while self._read(0.05):
            if not select.select([self.master], [], [], 0)[0]:
                break
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read().decode("utf-8", errors="replace")
        self.exit_code = self.process.returncode
        return self.exit_code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        try:
            os.close(self.master)
        except OSError:
            pass

    def __enter__(self) -> TerminalSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
