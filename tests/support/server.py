"""A throwaway MongoDB wire-protocol server (SecantusDB) for tests, examples and benchmarks.

``start_server()`` starts ``secantusd-py`` on a free loopback port with its data in a temporary
folder, waits until it answers ``ping``, and always stops it and removes the folder on exit::

    from tests.support.server import start_server

    with start_server() as server:
        client = MongoClient(server.uri)
        ...
        server.stop()  # fault tests: the server goes away ...
        server.start()  # ... and comes back on the same port with the same data

The server runs in its own session, so a Ctrl-C in the terminal reaches the test runner but not the
server, and the owner shuts it down in order. On Linux the server also gets SIGTERM if the thread that
started it dies, so even a SIGKILLed test run does not leave a server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from pymongo import MongoClient
from pymongo.errors import PyMongoError

__all__ = ["ServerError", "ServerHandle", "die_with_parent_hook", "free_port", "start_server"]

SERVER_EXECUTABLE = "secantusd-py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_CACHE_SIZE = "256M"
DEFAULT_STARTUP_TIMEOUT = 60.0
STOP_GRACE_SECONDS = 10.0
_PING_TIMEOUT_MS = 500
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The test server could not be found, did not start, or died before answering."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """Return a TCP port on ``host`` that is free right now.

    Args:
        host: The address to bind to while asking the kernel for a port.

    Returns:
        A port number that was unused at the moment of the call.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _find_executable() -> str:
    """Locate ``secantusd-py``: first next to the running interpreter (the venv), then on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / SERVER_EXECUTABLE
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(SERVER_EXECUTABLE)
    if found is None:
        raise ServerError(
            f"{SERVER_EXECUTABLE} not found next to {sys.executable} or on PATH; "
            "run `uv sync` (the dev group installs SecantusDB)"
        )
    return found


def die_with_parent_hook() -> Callable[[], None] | None:
    """Build a ``preexec_fn`` asking Linux to SIGTERM the child when the thread starting it dies.

    Returns:
        The hook, or ``None`` where ``prctl(PR_SET_PDEATHSIG)`` is not available.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl
            os._exit(1)

    return hook


class ServerHandle:
    """One SecantusDB server process bound to a data folder and a port.

    The data folder holds ``storage/`` (the database files), ``server.log`` (the server's stdout and
    stderr, appended across restarts) and an empty ``secantusd.toml`` so no stray config file in the
    working or home directory changes the server.

    Attributes:
        host: The loopback address the server listens on.
        port: The TCP port, kept across ``stop()`` / ``start()``.
        data_dir: The folder holding storage, log and config.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        host: str = DEFAULT_HOST,
        cache_size: str = DEFAULT_CACHE_SIZE,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Describe a server; nothing runs until ``start()``.

        Args:
            data_dir: Folder for storage, log and config; created if missing.
            port: TCP port; a free one is picked when omitted.
            host: Address to listen on.
            cache_size: WiredTiger cache size passed to ``--cache-size``.
            startup_timeout: Seconds ``start()`` waits for the first successful ping.
            extra_args: More ``secantusd-py`` flags, e.g. ``["--sync-on-commit"]`` so that writes
                survive ``kill()`` without ``j=True``, or ``["--enable-test-commands"]`` for
                ``configureFailPoint``.
        """
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.data_dir = str(data_dir)
        self.cache_size = cache_size
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """The connection string for this server (direct connection, no credentials)."""
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def storage_path(self) -> str:
        """The folder holding the database files."""
        return os.path.join(self.data_dir, "storage")

    @property
    def log_path(self) -> str:
        """The file receiving the server's stdout and stderr."""
        return os.path.join(self.data_dir, "server.log")

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers ``ping``.

        Restarting after ``stop()`` or ``kill()`` reuses the same port and data folder.

        Raises:
            ServerError: The executable is missing, the port is taken, or the server exited or
                stayed silent past ``startup_timeout``; then the message ends with the server log tail.
        """
        if self.is_running:
            return
        self._close_log()
        self._check_port_free()
        os.makedirs(self.storage_path, exist_ok=True)
        config_path = os.path.join(self.data_dir, "secantusd.toml")
        Path(config_path).touch()
        command = [
            _find_executable(),
            "--config",
            config_path,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            self.storage_path,
            "--cache-size",
            self.cache_size,
            *self.extra_args,
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the handle, closed in stop()
        self._log.write(f"--- test_server: starting {SERVER_EXECUTABLE} on {self.host}:{self.port}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            command,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it is still alive after ``timeout`` seconds.

        Safe to call more than once and on a server that already died.

        Args:
            timeout: Seconds to wait after SIGTERM before SIGKILL.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._close_log()

    def kill(self) -> None:
        """Kill the server with SIGKILL at once, as a crash would; ``start()`` brings it back.

        As with mongod, acknowledged writes not yet flushed to the journal are lost: write with
        ``j=True`` or start the server with ``--sync-on-commit`` when a test needs them back.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._close_log()

    def restart(self) -> None:
        """Stop the server gracefully and start it again on the same port and data."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the server log (empty if there is none yet)."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_port_free(self) -> None:
        """Refuse a port someone else listens on: the readiness ping would reach their server, not ours."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise ServerError(f"port {self.port} on {self.host} is not free: {exc}") from exc

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        proc = self._proc
        while proc is not None:
            code = proc.poll()
            if code is not None:
                raise ServerError(
                    f"{SERVER_EXECUTABLE} exited with code {code} before answering on port {self.port}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._ping():
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{SERVER_EXECUTABLE} did not answer ping on port {self.port} within "
                    f"{self.startup_timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _ping(self) -> bool:
        try:  # cheap check first: pymongo waits out its whole selection timeout on a closed port
            socket.create_connection((self.host, self.port), timeout=_PING_TIMEOUT_MS / 1000).close()
        except OSError:
            return False
        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=_PING_TIMEOUT_MS, connectTimeoutMS=_PING_TIMEOUT_MS
        )
        try:
            client.admin.command("ping")
        except PyMongoError:
            return False
        finally:
            client.close()
        return True

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"ServerHandle(uri={self.uri!r}, data_dir={self.data_dir!r}, {state})"


@contextlib.contextmanager
def start_server(
    data_dir: str | os.PathLike[str] | None = None,
    port: int | None = None,
    *,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> Iterator[ServerHandle]:
    """Run a SecantusDB server for the duration of a ``with`` block.

    Args:
        data_dir: Folder for storage, log and config. When omitted a temporary folder is created and
            removed on exit; a folder passed in is kept.
        port: TCP port; a free loopback port is picked when omitted.
        startup_timeout: Seconds to wait for the first successful ping.
        extra_args: More ``secantusd-py`` flags (see ``ServerHandle``).

    Yields:
        The running server's handle. The server is stopped on exit whatever happened in the block.

    Raises:
        ServerError: The server could not be started.
    """
    owns_dir = data_dir is None
    folder = tempfile.mkdtemp(prefix="msm-secantus-") if data_dir is None else os.fspath(data_dir)
    try:
        handle = ServerHandle(folder, port, startup_timeout=startup_timeout, extra_args=extra_args)
        try:
            handle.start()
            yield handle
        finally:
            handle.stop()
    finally:
        if owns_dir:
            shutil.rmtree(folder, ignore_errors=True)
