"""The repository contract against a real MongoDB wire-protocol server."""

from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from mongodb_session_manager import MongoDBSessionRepository
from tests.support.repository_contract import MessageContract, SessionAgentContract


@pytest.fixture
def repo(mongo_client: MongoClient, database_name: str) -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repository:
        yield repository


class TestSessionsAndAgents(SessionAgentContract):
    pass


class TestMessages(MessageContract):
    pass
