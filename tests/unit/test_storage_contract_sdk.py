"""The storage contract holds for the SDK's own backends: its expectations are Strands' semantics.

``tests/support/storage_contract.py`` is what ``MongoDBStorage`` is held to
(``tests/integration/test_storage_contract.py``); here the same cases run on ``InMemoryStorage`` and
``LocalFileStorage``, so a case that only our backend passes would fail here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from strands.storage import InMemoryStorage, LocalFileStorage

from tests.support.storage_contract import CASES

BACKENDS: dict[str, Callable[[Path], Any]] = {
    "in_memory": lambda _tmp: InMemoryStorage(),
    "local_file": lambda tmp: LocalFileStorage(str(tmp / "store")),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sdk_backend_meets_the_contract(backend: str, name: str, tmp_path: Path) -> None:
    asyncio.run(CASES[name](BACKENDS[backend](tmp_path)))
