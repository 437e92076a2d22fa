"""The parts of the repository contract that mongomock can run (no server needed)."""

from collections.abc import Iterator

import mongomock
import pytest

from mongodb_session_manager import MongoDBSessionRepository
from tests.support.repository_contract import SessionAgentContract


@pytest.fixture
def repo() -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(client=mongomock.MongoClient(), database_name="unit") as repository:
        yield repository


class TestSessionsAndAgentsOnMongomock(SessionAgentContract):
    pass
