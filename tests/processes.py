"""Helpers for tests that start real processes (servers, workers) and wait on them.

``ManagedProcess`` starts a command in /work/main (the repository root), sends its stdout and
stderr to a temporary log file, and polls until a TCP port accepts connections and/or a line
appears in the log: never a fixed sleep. It stops the whole process group with SIGTERM, then
SIGKILL after a grace period. When startup fails, or the ``with`` body raises, the error
carries the tail of the log; ``conftest.py`` adds the tails of live processes to the report of
any failing test.

    with ManagedProcess([sys.executable, "manage.py", "local_model", "--port", str(port)],
                        name="local-model", ready_line="local model listening on") as proc:
        ...
        proc.kill()  # SIGKILL, for crash tests
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 60
_POLL_START = 0.01
_POLL_MAX = 0.1

# Processes started and not yet stopped, for the failure report hook in conftest.py.
LIVE: list[ManagedProcess] = []


class ProcessError(RuntimeError):
    """A managed process failed to start or died; the message ends with its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's pick, so races are rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A subprocess with a log file, a readiness wait and a reliable teardown."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path = ROOT,
        ready_port: int | None = None,
        ready_host: str = "127.0.0.1",
        ready_line: str | re.Pattern[str] | None = None,
        startup_timeout: float = 30.0,
        stop_grace: float = 5.0,
    ):
        """``env`` is added to (and overrides) the current environment; a value of ``""``
        is passed as an empty string. ``ready_line`` is a substring or a compiled regex."""
        self.cmd = [str(part) for part in cmd]
        self.name = name or Path(self.cmd[0]).name
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = Path(cwd)
        self.ready_port = ready_port
        self.ready_host = ready_host
        self.ready_line = ready_line
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.popen: subprocess.Popen[bytes] | None = None
        self.ready_match: str | None = None
        with tempfile.NamedTemporaryFile(
            prefix=f"{self.name}-", suffix=".log", delete=False
        ) as log:
            self.log_path = Path(log.name)
        self._log_handle: IO[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process and wait until it is ready; raise ``ProcessError`` if not."""
        self._log_handle = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown reaches its children
        )
        LIVE.append(self)
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = _POLL_START
        line_seen = self.ready_line is None
        port_seen = self.ready_port is None
        while True:
            if not line_seen:
                self.ready_match = self._find_ready_line()
                line_seen = self.ready_match is not None
            if line_seen and not port_seen:
                assert self.ready_port is not None
                port_seen = port_open(self.ready_host, self.ready_port)
            if line_seen and port_seen:
                return
            if self.returncode is not None:
                raise self.error(f"exited with status {self.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise self.error(f"not ready after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> str:
        """Poll the log until a line matches (substring or regex); return that line."""
        deadline = time.monotonic() + timeout
        delay = _POLL_START
        while True:
            for line in self.log_text().splitlines():
                if _matches(pattern, line):
                    return line
            if self.returncode is not None:
                raise self.error(f"exited with status {self.returncode} while waiting")
            if time.monotonic() > deadline:
                raise self.error(f"no line matching {pattern!r} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``stop_grace``; return the status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(self.stop_grace)
        self._close()
        return self.popen.returncode

    def kill(self) -> None:
        """``kill -9`` the process group now (a crash, for recovery tests) and reap it."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self._signal(signal.SIGKILL)
        self.popen.wait(self.stop_grace)
        self._close()

    def __enter__(self) -> Self:
        if self.popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is not None and not isinstance(exc, ProcessError):
            exc.add_note(self.describe())
        elif exc is None:
            self.log_path.unlink(missing_ok=True)

    # --- state and output --------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        """The command, status and log tail: what a failure message needs."""
        status = "running" if self.alive() else f"exit status {self.returncode}"
        return (
            f"--- {self.name} ({status}; log {self.log_path}) ---\n"
            f"$ {' '.join(self.cmd)}\n{self.log_tail()}\n--- end of {self.name} log ---"
        )

    def error(self, problem: str) -> ProcessError:
        return ProcessError(f"{self.name} {problem}\n{self.describe()}")

    # --- internals ---------------------------------------------------------------------

    def _find_ready_line(self) -> str | None:
        assert self.ready_line is not None
        for line in self.log_text().splitlines():
            if _matches(self.ready_line, line):
                return line
        return None

    def _signal(self, signum: int) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def _close(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self in LIVE:
            LIVE.remove(self)


def _matches(pattern: str | re.Pattern[str], line: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.search(line) is not None
    return pattern in line
