#!/usr/bin/env python3
"""Run a command against a throwaway SecantusDB server (MongoDB wire protocol).

Usage:
    python scripts/test_server.py run -- CMD [ARGS...]
        If MONGODB_URI is set, exec CMD unchanged. Otherwise start a server on a free loopback port
        with a temporary data folder, run CMD with MONGODB_URI pointing at it, then stop the server
        and delete the folder whatever happened (CMD failed, Ctrl-C, SIGTERM or SIGHUP to this
        script). Exits with CMD's exit code, or 128 + signal number when interrupted.

    python scripts/test_server.py serve [--port PORT] [--data-dir DIR]
        Start a server, print its MONGODB_URI, and keep it until Ctrl-C or SIGTERM.

The server itself is managed by ``tests.support.server.start_server``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import ServerError, ServerHandle, die_with_parent_hook, start_server

CHILD_GRACE_SECONDS = 30.0
CHILD_KILL_SECONDS = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """The first SIGINT, SIGTERM or SIGHUP received by this script."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalTrap:
    """Turn the first SIGINT, SIGTERM or SIGHUP into ``Interrupted``; later ones never interrupt cleanup."""

    def __init__(self) -> None:
        self.armed = True
        for signum in _SIGNALS:
            signal.signal(signum, self._handle)

    def disarm(self) -> None:
        """From now on signals are only reported, so stopping the server runs to the end."""
        self.armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise Interrupted(signum)
        _say(f"got {signal.Signals(signum).name}; cleaning up, please wait")


def _say(message: str) -> None:
    print(f"test_server: {message}", file=sys.stderr, flush=True)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _terminal_sent_it_to_child(signum: int) -> bool:
    """Whether a Ctrl-C from the terminal already reached the child (same foreground process group)."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _stop_child(child: subprocess.Popen[bytes], signum: int) -> None:
    """Pass the signal on to the child, give it time to clean up, then escalate."""
    if not _terminal_sent_it_to_child(signum) and child.poll() is None:
        child.send_signal(signum)
    for escalation, wait in ((signal.SIGTERM, CHILD_GRACE_SECONDS), (signal.SIGKILL, CHILD_KILL_SECONDS)):
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            _say(f"command still running; sending {escalation.name}")
            child.send_signal(escalation)
    child.wait()


def _run_with_server(command: list[str], server: ServerHandle) -> int:
    """Run ``command`` against ``server``; on the first signal stop the command and return 128 + signal."""
    _say(f"SecantusDB listening at {server.uri} (data in {server.data_dir})")
    try:
        child = subprocess.Popen(
            command, env={**os.environ, "MONGODB_URI": server.uri}, preexec_fn=die_with_parent_hook()
        )
    except OSError as exc:
        _say(f"cannot run {command[0]!r}: {exc}")
        return 127
    try:
        code = _exit_code(child.wait())
    except Interrupted as exc:
        _say(f"{signal.Signals(exc.signum).name} received; stopping the command and the server")
        _stop_child(child, exc.signum)
        return 128 + exc.signum
    if not server.is_running:
        _say(f"the server died during the run; log tail:\n{server.log_tail()}")
    return code


def run(command: list[str]) -> int:
    """Run ``command`` with MONGODB_URI set, starting a server only if it is not already set."""
    if os.environ.get("MONGODB_URI"):
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            _say(f"cannot run {command[0]!r}: {exc}")
            return 127
    if shutil.which(command[0]) is None:
        _say(f"cannot run {command[0]!r}: command not found")
        return 127
    trap = SignalTrap()
    try:
        with start_server() as server:
            try:
                return _run_with_server(command, server)
            finally:
                trap.disarm()  # whatever happened, stopping the server and removing its folder must finish
    except Interrupted as exc:  # during start-up
        _say(f"{signal.Signals(exc.signum).name} received; server stopped")
        return 128 + exc.signum
    except ServerError as exc:
        _say(str(exc))
        return 1


def serve(port: int | None, data_dir: str | None) -> int:
    """Run a server in the foreground until interrupted."""
    SignalTrap()
    try:
        with start_server(data_dir=data_dir, port=port) as server:
            print(f"MONGODB_URI={server.uri}", flush=True)
            _say(f"data in {server.data_dir}; Ctrl-C stops the server")
            while True:
                signal.pause()
    except Interrupted:
        return 0
    except ServerError as exc:
        _say(str(exc))
        return 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and dispatch."""
    parser = argparse.ArgumentParser(prog="test_server.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    run_parser = sub.add_parser("run", help="run CMD with MONGODB_URI pointing at a throwaway server")
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    serve_parser = sub.add_parser("serve", help="run a server in the foreground")
    serve_parser.add_argument("--port", type=int, default=None)
    serve_parser.add_argument("--data-dir", default=None, help="keep data here (default: a temp folder)")
    args = parser.parse_args(argv)

    if args.mode == "serve":
        return serve(args.port, args.data_dir)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command: run -- CMD [ARGS...]")
    return run(command)


if __name__ == "__main__":
    sys.exit(main())
