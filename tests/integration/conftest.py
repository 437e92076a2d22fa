"""Fixtures for tests that talk to a real MongoDB wire-protocol server.

The server comes from ``MONGODB_URI``; ``make test`` (``scripts/test_server.py run``) starts a
throwaway SecantusDB and sets it. Without it these tests fail rather than skip: an integration
suite that silently skips proves nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` as ``integration``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def mongodb_uri() -> str:
    """The connection string of the server under test, from ``MONGODB_URI``."""
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.fail(
            "MONGODB_URI is not set. Integration tests need a MongoDB wire-protocol server: run them with "
            "`make test`, or `uv run python scripts/test_server.py run -- uv run pytest tests/integration`, "
            "or set MONGODB_URI to a server of your own.",
            pytrace=False,
        )
    return uri


@pytest.fixture(scope="session")
def mongo_client(mongodb_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A client shared by the whole session; closed at the end."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def database_name(mongo_client: MongoClient[dict[str, Any]]) -> Iterator[str]:
    """A database name no other test uses; the database is dropped after the test."""
    name = f"msm_test_{uuid.uuid4().hex[:8]}"
    yield name
    mongo_client.drop_database(name)
