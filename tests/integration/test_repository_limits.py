"""Document size limit and once-per-process index creation, against a real server."""

from __future__ import annotations

import threading
from typing import Any

import bson
import pytest
from pymongo import MongoClient, monitoring
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionRepository, SessionTooLargeError
from mongodb_session_manager.mongodb_session_repository import MAX_DOCUMENT_SIZE


class CommandLog(monitoring.CommandListener):
    """Records the names of the commands a client sends."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _image_message(message_id: int, size: int) -> SessionMessage:
    return SessionMessage(
        message={"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": b"x" * size}}}]},
        message_id=message_id,
    )


@pytest.fixture
def repo(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> MongoDBSessionRepository:
    repository = MongoDBSessionRepository(client=mongo_client, database_name=database_name)
    repository.create_session(Session(session_id="big", session_type=SessionType.AGENT))
    repository.create_agent("big", SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
    return repository


def _text_message(message_id: int, size: int) -> SessionMessage:
    return SessionMessage(message={"role": "user", "content": [{"text": "t" * size}]}, message_id=message_id)


def _document_size(repo: MongoDBSessionRepository, session_id: str) -> int:
    document = repo.collection.find_one({"_id": session_id})
    assert document is not None
    return len(bson.encode(document))


def test_large_text_messages_move_out_instead_of_meeting_16mb(repo: MongoDBSessionRepository) -> None:
    # 18 MB of text that cannot be offloaded as binary: older messages leave the document instead.
    messages = [_text_message(i, 6_000_000) for i in range(3)]
    for message in messages:
        repo.create_message("big", "a", message)
    assert repo.list_messages("big", "a") == messages
    assert _document_size(repo, "big") < 7_000_000
    assert repo.read_message("big", "a", 0) == messages[0]


def test_large_images_are_stored_outside_the_document(repo: MongoDBSessionRepository) -> None:
    messages = [_image_message(0, 6_000_000), _image_message(1, 17 * 1024 * 1024)]
    for message in messages:
        repo.create_message("big", "a", message)
    assert repo.list_messages("big", "a") == messages
    assert _document_size(repo, "big") < 10_000


def test_a_single_message_over_16mb_is_refused_before_sending(repo: MongoDBSessionRepository) -> None:
    with pytest.raises(SessionTooLargeError, match="session_id=<big>") as raised:
        repo.create_message("big", "a", _text_message(0, 17 * 1024 * 1024))
    error = raised.value
    assert isinstance(error, ValueError)
    assert error.limit == MAX_DOCUMENT_SIZE
    assert error.size is not None and error.size > 17 * 1024 * 1024
    assert repo.list_messages("big", "a") == []
    assert repo.overflow.count_documents({}) == 0
    # The counter did not move: the next append is still message 0.
    repo.create_message("big", "a", _text_message(0, 10))


def test_agent_state_beside_large_messages_makes_room(repo: MongoDBSessionRepository) -> None:
    message = _text_message(0, 9_000_000)
    repo.create_message("big", "a", message)
    agent = SessionAgent(agent_id="a", state={"blob": "y" * 9_000_000}, conversation_manager_state={})
    repo.update_agent("big", agent)  # 18 MB together: the message moves out to make room
    stored = repo.read_agent("big", "a")
    assert stored is not None and stored.state == agent.state
    assert repo.list_messages("big", "a") == [message]


def test_agent_state_past_16mb_fails_clearly(repo: MongoDBSessionRepository) -> None:
    agent = SessionAgent(agent_id="a", state={"blob": "y" * (17 * 1024 * 1024)}, conversation_manager_state={})
    with pytest.raises(SessionTooLargeError):
        repo.update_agent("big", agent)
    stored = repo.read_agent("big", "a")
    assert stored is not None and stored.state == {}


def test_indexes_are_created_once_per_collection_per_process(mongodb_uri: str, database_name: str) -> None:
    log = CommandLog()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[log])
    try:
        for _ in range(5):
            MongoDBSessionRepository(client=client, database_name=database_name, collection_name="once")
        MongoDBSessionRepository(client=client, database_name=database_name, collection_name="other")
        assert log.names.count("createIndexes") == 2  # both indexes of each collection in one command
        names = set(client[database_name]["once"].index_information())
        assert {"created_date_1", "updated_date_1"} <= names
    finally:
        client.close()


def test_repositories_from_one_connection_string_share_a_client(mongodb_uri: str, database_name: str) -> None:
    first = MongoDBSessionRepository(mongodb_uri, database_name=database_name)
    second = MongoDBSessionRepository(mongodb_uri, database_name=database_name)
    try:
        assert first.client is second.client
        assert first.owns_client and second.owns_client
        first.close()
        # The shared client stays usable while another repository holds it.
        assert second.read_session("nothing-here") is None
    finally:
        second.close()
