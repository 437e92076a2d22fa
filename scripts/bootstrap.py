#!/usr/bin/env python3
"""Make sure `uv` is available, installing it inside the project if it is not. Prints its path.

Used by ``make install`` (and so by ``make demo`` and ``make test``) on a machine that has only
Python 3.11+ and make. Nothing is installed into the machine's own Python:

1. ``uv`` on PATH is used as it is.
2. Otherwise ``.tools/`` (ignored by git) gets a virtual environment of its own with ``uv`` in it
   (``python -m venv`` + pip), or, where ``venv`` cannot provide pip (Debian without
   python3-venv), ``pip install --target .tools/uv`` with the machine's pip, which writes only there.

Progress goes to stderr; stdout is only the path, for the Makefile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MINIMUM_PYTHON = (3, 11)
ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"
VENV_UV = TOOLS / "bin" / "uv"
TARGET_UV = TOOLS / "uv" / "bin" / "uv"
UV_REQUIREMENT = "uv>=0.5,<1"


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def run(*command: str | Path) -> bool:
    return subprocess.run([str(part) for part in command], stdout=sys.stderr).returncode == 0


def installed() -> Path | None:
    for candidate in (VENV_UV, TARGET_UV):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def install() -> Path | None:
    say(f"uv is not on PATH: installing it inside the project, in {TOOLS.relative_to(ROOT)}/ (nothing system-wide)")
    if run(sys.executable, "-m", "venv", TOOLS) and run(
        TOOLS / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", UV_REQUIREMENT
    ):
        return installed()
    say("python -m venv could not provide pip here; trying pip install --target instead")
    shutil.rmtree(TOOLS, ignore_errors=True)
    target = TOOLS / "uv"
    if run(sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--target", target, UV_REQUIREMENT):
        return installed()
    return None


def main() -> int:
    if sys.version_info < MINIMUM_PYTHON:
        wanted = ".".join(map(str, MINIMUM_PYTHON))
        say(f"Python {wanted} or newer is needed; {sys.executable} is {sys.version.split()[0]}")
        return 1
    found = shutil.which("uv")
    uv = Path(found) if found else installed() or install()
    if uv is None:
        say("could not install uv: install it yourself (https://docs.astral.sh/uv/) and run make again")
        return 1
    print(uv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
