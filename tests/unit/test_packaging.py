"""The built package is fit for a package index: license, metadata, and a long description whose
links and instructions make sense on an index page (no server; builds with uv)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    """uv as `make` runs it: `uv run` names itself in $UV; else PATH, else the project-local copy."""
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(ROOT / ".tools" / "bin" / "uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("uv not found: run the tests through `make test` (which installs it)", pytrace=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([_uv(), "build", "--quiet", "--out-dir", str(out), str(ROOT)], check=True, timeout=600)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    yield wheel, sdist


def _metadata(wheel: Path) -> tuple[dict[str, list[str]], str]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = HeaderParser().parsestr(archive.read(name).decode())
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key, []).append(value)
    return headers, str(message.get_payload())


def test_the_wheel_and_sdist_carry_the_license_text_and_an_spdx_expression(built: tuple[Path, Path]) -> None:
    wheel, sdist = built
    headers, _ = _metadata(wheel)
    assert headers["License-Expression"] == ["MIT"]
    assert "License" not in headers  # the old free-text form
    with zipfile.ZipFile(wheel) as archive:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
        assert "mongodb_session_manager/py.typed" in archive.namelist()
    with tarfile.open(sdist) as archive:
        assert any(member.name.endswith("/LICENSE") for member in archive.getmembers())
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_the_metadata_classifies_the_package(built: tuple[Path, Path]) -> None:
    headers, _ = _metadata(built[0])
    classifiers = headers["Classifier"]
    assert "Typing :: Typed" in classifiers
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in (11, 12, 13)} <= set(classifiers)
    assert headers["Requires-Python"] == [">=3.11"]
    assert headers["Description-Content-Type"] == ["text/markdown"]


def test_the_long_description_has_no_link_or_instruction_that_only_works_in_the_repository(
    built: tuple[Path, Path],
) -> None:
    _, description = _metadata(built[0])
    assert description.startswith("# mongodb-session-manager")
    assert "## Guarantees and errors" in description and "## Installing" in description
    relative = re.findall(r"\]\((?!https?://)[^)]*\)", description)
    assert relative == [], f"links that break on an index page: {relative}"
    assert "<!--" not in description
    for repository_only in ("## The two commands", "## Development", "## Chat playground", "make demo", "make test"):
        assert repository_only not in description
