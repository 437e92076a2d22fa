"""Encryption and the restore window: the count of messages the conversation manager trimmed stays
readable on the server (the rest of its state is encrypted), so an encrypted restore costs what a
plain one does: one aggregate (plus at most one key fetch)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Binary
from pymongo import MongoClient
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import ClientSideEncryption, MongoDBSessionManager, MongoDBSessionRepository
from tests.integration.test_encryption import Commands
from tests.support.scripted_model import ScriptedModel

STORED = 60
WINDOW = 20


@pytest.fixture
def encryption(database_name: str) -> ClientSideEncryption:
    return ClientSideEncryption(
        kms_providers={"local": {"key": os.urandom(96)}}, key_vault_namespace=f"{database_name}.vault"
    )


@pytest.fixture
def logged(mongodb_uri: str) -> Iterator[tuple[Commands, MongoClient[dict[str, Any]]]]:
    log = Commands()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[log])
    try:
        yield log, client
    finally:
        client.close()


def _store(repo: MongoDBSessionRepository, session_id: str) -> list[SessionMessage]:
    """A session whose sliding window trimmed all but the last ``WINDOW`` of ``STORED`` messages."""
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    repo.create_agent(
        session_id,
        SessionAgent(
            agent_id="default",
            state={"secret": "kept"},
            conversation_manager_state={
                "__name__": "SlidingWindowConversationManager",
                "removed_message_count": STORED - WINDOW,
                "model_call_count": 0,
            },
        ),
    )
    messages = [
        SessionMessage(
            message={"role": "user" if i % 2 == 0 else "assistant", "content": [{"text": f"{i:04d} said"}]},
            message_id=i,
        )
        for i in range(STORED)
    ]
    for message in messages:
        repo.create_message(session_id, "default", message)
    return messages


def _restore(client: MongoClient[dict[str, Any]], database_name: str, collection: str, **options: Any) -> Agent:
    manager = MongoDBSessionManager(
        "s", client=client, database_name=database_name, collection_name=collection, **options
    )
    return Agent(
        model=ScriptedModel([]),
        session_manager=manager,
        conversation_manager=SlidingWindowConversationManager(window_size=WINDOW),
        callback_handler=None,
    )


def test_an_encrypted_restore_reads_its_window_in_one_aggregate_as_a_plain_one_does(
    logged: tuple[Commands, MongoClient[dict[str, Any]]], database_name: str, encryption: ClientSideEncryption
) -> None:
    log, client = logged
    commands: dict[bool, list[str]] = {}
    for encrypted in (False, True):
        collection = f"windows{int(encrypted)}"
        settings = {"encryption": encryption} if encrypted else {}
        repo = MongoDBSessionRepository(
            client=client, database_name=database_name, collection_name=collection, **settings
        )
        messages = _store(repo, "s")
        if encrypted:
            stored = client[database_name][collection].find_one({"_id": "s"})
            assert stored is not None
            agent_doc = stored["agents"]["default"]
            # The manager's state is ciphertext; the count it trimmed is kept beside it in clear.
            assert isinstance(agent_doc["conversation_manager_state"], Binary)
            assert agent_doc["removed_message_count"] == STORED - WINDOW
        log.take()

        agent = _restore(client, database_name, collection, **settings)
        commands[encrypted] = [name for name in log.take() if not name.endswith(":vault")]
        assert agent.messages == [m.message for m in messages[STORED - WINDOW :]]
        assert agent.state.get("secret") == "kept"
    assert commands[False] == ["aggregate:windows0"]
    assert commands[True] == ["aggregate:windows1"]
