"""Run the operators' command line, as an operator would, for the CLI's end-to-end tests.

``run_cli(uri, "list", "--database", name)`` runs ``python -m mongodb_session_manager list ...`` in a
subprocess from the repository root with ``MONGODB_URI`` set, and returns the finished process
(``returncode``, ``stdout``, ``stderr`` as text); ``cli_json(...)`` adds ``--json`` and parses
stdout. Every command is run that way at least once. Strands' import alone takes over a second per
process, so the variations of a command (other options, other inputs) run the same ``main`` in this
process instead: ``run_main`` / ``main_json``, same arguments, same results.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mongodb_session_manager.cli import main

__all__ = ["REPO_ROOT", "cli_json", "main_json", "run_cli", "run_main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: A guard against a hung command, not a timing assertion.
_GUARD_SECONDS = 300


def run_cli(
    uri: str | None,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mongodb_session_manager *args`` with ``MONGODB_URI=uri`` (unset when ``None``)."""
    environment = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
    if uri is not None:
        environment["MONGODB_URI"] = uri
    environment.update(env or {})
    completed = subprocess.run(
        [sys.executable, "-m", "mongodb_session_manager", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd or REPO_ROOT,
        env=environment,
        timeout=_GUARD_SECONDS,
        check=False,
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


def cli_json(uri: str, *args: str, expect: int = 0) -> Any:
    """Run a command with ``--json``, check its exit status, and return what it printed, parsed."""
    completed = run_cli(uri, *args, "--json")
    assert completed.returncode == expect, (
        f"{' '.join(args)}: exit {completed.returncode}, expected {expect}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return json.loads(completed.stdout)


def run_main(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line's ``main`` in this process with ``--uri uri`` (see the module docstring)."""
    out, err = io.StringIO(), io.StringIO()
    status = main([*args, "--uri", uri], out=out, err=err)
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def main_json(uri: str, *args: str, expect: int = 0) -> Any:
    """:func:`cli_json` in this process."""
    completed = run_main(uri, *args, "--json")
    assert completed.returncode == expect, (
        f"{' '.join(args)}: exit {completed.returncode}, expected {expect}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return json.loads(completed.stdout)
