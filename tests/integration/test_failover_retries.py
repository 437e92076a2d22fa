"""Appends across a failover: retried once by the driver (retryable writes), stored exactly once.

A replica-set failover looks to a client like its primary refusing a write (``NotWritablePrimary``,
10107, before applying it), a dropped connection, or a write applied whose reply says the primary
stepped down (189, with the ``RetryableWriteError`` label). The driver retries each once, with the
same ``txnNumber`` (``retryWrites`` is on by default), and the server answers a retry of an applied
write from its record. These tests arm the test server's ``failCommand`` fail point on the next
append of one client (by ``appName``) and check that the message is stored once, that the agent's
next turn works, and that a restore (a new manager) sees every message. SecantusDB runs here with
``--enable-test-commands`` (fail points) and ``--sync-on-commit``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager

from mongodb_session_manager import MongoDBSessionManager
from tests.support.faults import NOT_WRITABLE_PRIMARY, PRIMARY_STEPPED_DOWN, WriteLog, fail_next, fail_point_off
from tests.support.scripted_model import EchoModel
from tests.support.server import ServerHandle, start_server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with start_server(extra_args=["--sync-on-commit", "--enable-test-commands"]) as handle:
        yield handle


@pytest.fixture
def admin(server: ServerHandle) -> Iterator[MongoClient[dict[str, Any]]]:
    with MongoClient(server.uri, serverSelectionTimeoutMS=10_000) as client:
        yield client
        fail_point_off(client)


FAILOVERS = [
    pytest.param(
        {"errorCode": NOT_WRITABLE_PRIMARY, "errorLabels": ["RetryableWriteError"]}, id="not-writable-primary"
    ),
    pytest.param({"closeConnection": True}, id="connection-dropped"),
    pytest.param(
        {
            "writeConcernError": {"code": PRIMARY_STEPPED_DOWN, "errmsg": "primary stepped down"},
            "errorLabels": ["RetryableWriteError"],
        },
        id="applied-then-stepped-down",
    ),
]


def _texts(messages: list[Any]) -> list[str]:
    return [" ".join(block.get("text", "") for block in m["content"]) for m in messages]


@pytest.mark.parametrize("failure", FAILOVERS)
@pytest.mark.parametrize("tenant", [None, "acme"])
def test_an_append_during_a_failover_is_retried_and_stored_exactly_once(
    server: ServerHandle, admin: MongoClient[dict[str, Any]], failure: dict[str, Any], tenant: str | None
) -> None:
    db = f"msm_failover_{uuid.uuid4().hex[:8]}"
    app = f"failover-{uuid.uuid4().hex[:6]}"
    writes = WriteLog()
    with MongoClient(
        server.uri, appName=app, event_listeners=[writes], serverSelectionTimeoutMS=15_000, heartbeatFrequencyMS=500
    ) as client:
        manager = MongoDBSessionManager("chat", client=client, database_name=db, tenant_id=tenant)
        agent = Agent(
            model=EchoModel(),
            session_manager=manager,
            conversation_manager=NullConversationManager(),
            callback_handler=None,
        )
        agent("first")
        writes.attempts.clear()
        fail_next(admin, app, failure)  # the next append: the user message of the second turn

        agent("second")

        # The failed append was retried once, as the same retryable write.
        assert [a["outcome"] for a in writes.attempts[:2]] in (["failed", "reply"], ["reply", "reply"])
        assert writes.attempts[0]["txnNumber"] is not None
        assert writes.attempts[0]["txnNumber"] == writes.attempts[1]["txnNumber"]
        agent("third")  # the next turn works
        expected = ["first", "echo: first", "second", "echo: second", "third", "echo: third"]
        assert _texts(agent.messages) == expected

        # Stored exactly once, in order, with a counter that agrees.
        key = "chat" if tenant is None else {"tenant": tenant, "session": "chat"}
        stored = admin[db]["sessions"].find_one({"_id": key})
        assert stored is not None
        (record,) = stored["agents"].values()
        assert [e["message_id"] for e in record["messages"]] == list(range(6)) and record["message_count"] == 6
        assert _texts([e["message"] for e in record["messages"]]) == expected

        # A restore sees every message.
        restored_manager = MongoDBSessionManager("chat", client=client, database_name=db, tenant_id=tenant)
        restored = Agent(
            model=EchoModel(),
            session_manager=restored_manager,
            conversation_manager=NullConversationManager(),
            callback_handler=None,
        )
        assert _texts(restored.messages) == expected
    admin.drop_database(db)
