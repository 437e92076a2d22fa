"""Secondary reads: a restore still sees the session's last write (causally consistent sessions).

With the default (primary) read preference the library sends no session of its own. With another
one (here ``secondaryPreferred`` on the single test node), every command of a session operation runs
in a causally consistent ``ClientSession``, and reads carry ``readConcern.afterClusterTime`` equal to
the ``operationTime`` of the last write this process made to that session: the server holding the
read waits until it has applied it.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager

from mongodb_session_manager import MongoDBSessionManager
from tests.support.scripted_model import EchoModel


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.replies: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.replies.append((event.command_name, dict(event.reply)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def commands() -> Commands:
    return Commands()


def _agent(client: MongoClient[dict[str, Any]], database_name: str, tenant: str | None = None) -> Agent:
    manager = MongoDBSessionManager("chat", client=client, database_name=database_name, tenant_id=tenant)
    return Agent(
        model=EchoModel(),
        session_manager=manager,
        conversation_manager=NullConversationManager(),
        callback_handler=None,
    )


def _data(commands: Commands) -> list[tuple[str, dict[str, Any]]]:
    return [(name, command) for name, command in commands.sent if name in ("find", "aggregate", "update", "insert")]


def test_with_primary_reads_no_session_of_ours_and_no_read_concern(
    mongodb_uri: str, database_name: str, commands: Commands
) -> None:
    with MongoClient(mongodb_uri, event_listeners=[commands]) as client:
        _agent(client, database_name)("hello")
        _agent(client, database_name)
    assert _data(commands)
    assert all("readConcern" not in command for _, command in _data(commands))


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_with_secondary_reads_a_restore_is_chained_to_the_last_write(
    mongodb_uri: str, database_name: str, commands: Commands, tenant: str | None
) -> None:
    with MongoClient(mongodb_uri, event_listeners=[commands], readPreference="secondaryPreferred") as client:
        first = _agent(client, database_name, tenant)
        first("hello")
        first("again")
        updates = [reply for name, reply in commands.replies if name == "update"]
        last_write = updates[-1]["operationTime"]
        commands.sent.clear()

        restored = _agent(client, database_name, tenant)  # a new manager: the restore reads

        assert [m["content"][0]["text"] for m in restored.messages] == ["hello", "echo: hello", "again", "echo: again"]
        reads = [command for name, command in _data(commands) if name in ("find", "aggregate")]
        assert reads, "the restore read the session"
        for command in reads:
            assert "lsid" in command  # in a session of ours
            assert command["readConcern"]["afterClusterTime"] >= last_write
        assert reads[0]["readConcern"]["afterClusterTime"] == last_write
