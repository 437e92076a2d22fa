"""The command audit itself, against a real server: it sees the library's commands, flags an
untargeted one, passes targeted ones, and ignores the test's own direct commands."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from strands.types.session import Session, SessionType

from mongodb_session_manager import MongoDBSessionRepository
from tests.support.command_audit import CommandAudit


def test_the_library_s_targeted_commands_are_counted_and_pass(
    mongodb_uri: str, database_name: str, command_audit: CommandAudit
) -> None:
    with MongoClient(mongodb_uri) as client:
        repo = MongoDBSessionRepository(client=client, database_name=database_name)
        before = command_audit.audited
        repo.create_session(Session(session_id="s", session_type=SessionType.AGENT))
        repo.update_metadata("s", {"k": "v"})
        assert repo.get_metadata("s") == {"k": "v"}
        assert command_audit.audited - before == 3  # insert, update, find: each checked
        assert command_audit.take() == []


def test_an_untargeted_library_command_is_flagged_and_the_test_s_own_is_not(
    mongodb_uri: str, database_name: str, command_audit: CommandAudit
) -> None:
    with MongoClient(mongodb_uri) as client:
        repo = MongoDBSessionRepository(client=client, database_name=database_name)
        repo.create_session(Session(session_id="s", session_type=SessionType.AGENT))
        repo.collection.find_one({"session_type": "AGENT"})  # the test's own read: not audited
        assert command_audit.take() == []
        # A library function sending a filter without the session key (as a bug would).
        found: Any = repo._store.find_one("s", {"session_type": "AGENT"}, {"_id": 1}, "read session")
        assert found is not None
        offences = command_audit.take()  # taken here, so this test's teardown does not fail
        assert [(o.role, o.command) for o in offences] == [("sessions", "find")]
        assert "no equality on _id" in offences[0].detail and "_store.py:find_one" in offences[0].origin
