"""``migrate_sessions``: message-log sessions become snapshots that restore the same agents.

Sessions are written by ``MongoDBSessionManager`` (a sliding window that has slid, tool use, state,
an image), directly through the repository (a summarizing conversation manager with its summary,
a null one), and by a Graph and a Swarm interrupted mid-run. After the migration, for every agent,
``SnapshotSessionManager`` over ``MongoDBStorage`` restores exactly what the message-log manager
restores (messages, state, conversation-manager, interrupt and model state), and the Graph and
the Swarm resume at the same node either way.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from strands import Agent, tool
from strands.agent.conversation_manager import (
    ConversationManager,
    NullConversationManager,
    SlidingWindowConversationManager,
    SummarizingConversationManager,
)
from strands.session import SnapshotSessionManager
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBSessionManager,
    MongoDBSessionRepository,
    MongoDBStorage,
    SessionValidationError,
    migrate_sessions,
)
from mongodb_session_manager.storage import MigrationProgress
from tests.support.restore_worker import agent_snapshot, to_jsonable
from tests.support.scripted_model import ScriptedModel, text, tool_call
from tests.support.storage_snapshot_worker import build_graph, build_swarm

COLLECTION = "sessions"
IMAGE = os.urandom(300_000)


class Crash(BaseException):
    """Stands for the process dying mid-run."""


class CustomWindow(SlidingWindowConversationManager):
    """A conversation manager of the application's own (its state names this class)."""


@tool
def lookup(city: str) -> str:
    """Look up the weather of a city."""
    return f"It is sunny in {city}."


def _same(a: Any, b: Any) -> bool:
    return json.dumps(to_jsonable(a), ensure_ascii=False) == json.dumps(to_jsonable(b), ensure_ascii=False)


@pytest.fixture
def repository(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repo:
        yield repo


@pytest.fixture
def storage(mongodb_uri: str, database_name: str) -> Iterator[MongoDBStorage]:
    with MongoDBStorage(mongodb_uri, database_name=database_name) as built:
        yield built


def _message_log(client: MongoClient[dict[str, Any]], database: str, session_id: str) -> MongoDBSessionManager:
    return MongoDBSessionManager(session_id, client=client, database_name=database, collection_name=COLLECTION)


def _store_sessions(client: MongoClient[dict[str, Any]], database: str, repository: MongoDBSessionRepository) -> None:
    # A conversation whose sliding window has slid, with a tool call, state and an image.
    manager = _message_log(client, database, "chat")
    model = ScriptedModel(
        [text("Hi Ada."), tool_call("lookup", {"city": "Oslo"}, tool_use_id="t1"), text("Sunny."), text("Nice.")]
    )
    agent = Agent(
        agent_id="assistant",
        model=model,
        tools=[lookup],
        conversation_manager=SlidingWindowConversationManager(window_size=4),
        callback_handler=None,
        session_manager=manager,
    )
    agent.state.set("profile", {"name": "Ada", "ü": [1, 2.5]})
    agent("My name is Ada.")
    agent("Weather in Oslo?")
    agent([{"text": "Look:"}, {"image": {"format": "png", "source": {"bytes": IMAGE}}}])
    assert agent.conversation_manager.removed_message_count > 0
    helper = Agent(
        agent_id="helper", model=ScriptedModel([text("Done.")]), callback_handler=None, session_manager=manager
    )
    helper("Help me.")
    manager.close()

    # A summarizing conversation manager that has summarized, and a null one, written as stored.
    repository.create_session(Session(session_id="summary", session_type=SessionType.AGENT))
    summary = {"role": "user", "content": [{"text": "Summary: Ada asked about tides."}]}
    repository.create_agent(
        "summary",
        SessionAgent(
            agent_id="summarizer",
            state={"topic": "tides"},
            conversation_manager_state={
                "__name__": "SummarizingConversationManager",
                "removed_message_count": 2,
                "summary_message": summary,
            },
            _internal_state={
                "interrupt_state": {"interrupts": {}, "context": {}, "activated": False},
                "model_state": {"k": 1},
            },
        ),
    )
    repository.create_agent(
        "summary",
        SessionAgent(
            agent_id="keeper",
            state={},
            conversation_manager_state={"__name__": "NullConversationManager", "removed_message_count": 0},
        ),
    )
    for agent_id in ("summarizer", "keeper"):
        for n in range(6):
            role = "user" if n % 2 == 0 else "assistant"
            message = {"role": role, "content": [{"text": f"{agent_id} message {n}"}]}
            repository.create_message("summary", agent_id, SessionMessage(message=message, message_id=n))  # type: ignore[arg-type]


def _interrupt_graph_and_swarm(manager: RepositorySessionManager) -> None:
    graph = build_graph(
        {"research": ScriptedModel([text("Tides follow the moon.")]), "write": ScriptedModel([RuntimeError("down")])},
        manager,  # type: ignore[arg-type]
    )
    with pytest.raises(RuntimeError, match="down"):
        graph("Write about tides")
    handoff = {"agent_name": "billing", "message": "refund A-1", "context": {"order": "A-1"}}
    triage = ScriptedModel([tool_call("handoff_to_agent", handoff, tool_use_id="h1"), text("Handed over.")])
    swarm = build_swarm({"triage": triage, "billing": ScriptedModel([Crash("power cut")])}, manager)  # type: ignore[arg-type]
    with pytest.raises(Crash):
        swarm("I want a refund for order A-1")


CONVERSATION_MANAGERS: dict[tuple[str, str], Callable[[], ConversationManager]] = {
    ("chat", "assistant"): lambda: SlidingWindowConversationManager(window_size=4),
    ("chat", "helper"): SlidingWindowConversationManager,
    ("summary", "summarizer"): SummarizingConversationManager,
    ("summary", "keeper"): NullConversationManager,
}


def test_migrated_agents_restore_exactly_as_from_the_message_log(
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    repository: MongoDBSessionRepository,
    storage: MongoDBStorage,
) -> None:
    _store_sessions(mongo_client, database_name, repository)
    seen: list[MigrationProgress] = []
    report = migrate_sessions(repository, storage, progress=seen.append)

    assert (report.sessions, report.agents, report.multi_agents, report.skipped, report.missing) == (2, 4, 0, 0, [])
    assert [(p.session_id, p.sessions, p.total, p.agents) for p in seen] == [
        ("chat", 1, None, 2),
        ("summary", 2, None, 4),
    ]
    restored = {}
    for (session_id, agent_id), make in CONVERSATION_MANAGERS.items():
        from_log = Agent(
            agent_id=agent_id,
            model=ScriptedModel([]),
            conversation_manager=make(),
            callback_handler=None,
            session_manager=_message_log(mongo_client, database_name, session_id),
        )
        from_snapshot = Agent(
            agent_id=agent_id,
            model=ScriptedModel([]),
            conversation_manager=make(),
            callback_handler=None,
            session_manager=SnapshotSessionManager(session_id, storage=storage),
        )
        expected, got = agent_snapshot(from_log), agent_snapshot(from_snapshot)
        assert expected["messages"], (session_id, agent_id)
        assert _same(got, expected), (session_id, agent_id)
        restored[agent_id] = got
    # what the message log restores, and so the snapshots hold: the summary, then what followed it;
    # the window after what the sliding window removed, the image bytes included
    summarizer = restored["summarizer"]
    assert summarizer["messages"][0]["content"][0]["text"] == "Summary: Ada asked about tides."
    assert [m["content"][0]["text"] for m in summarizer["messages"][1:]] == [
        f"summarizer message {n}" for n in range(2, 6)
    ]
    assert summarizer["state"] == {"topic": "tides"} and summarizer["model_state"] == {"k": 1}
    assistant = restored["assistant"]
    assert assistant["conversation_manager_state"]["removed_message_count"] > 0
    assert assistant["messages"][-2]["content"][1]["image"]["source"]["bytes"] == IMAGE
    assert assistant["state"] == {"profile": {"name": "Ada", "ü": [1, 2.5]}}
    assert len(restored["keeper"]["messages"]) == 6

    # The restored conversation carries on: the snapshot manager saves over the migrated snapshot.
    carried = Agent(
        agent_id="helper",
        model=ScriptedModel([text("Again.")]),
        callback_handler=None,
        session_manager=SnapshotSessionManager("chat", storage=storage),
    )
    carried("Once more.")
    assert [m["content"][0]["text"] for m in carried.messages] == ["Help me.", "Done.", "Once more.", "Again."]


def test_a_migration_resumes_skips_what_exists_and_overwrites_on_request(
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    repository: MongoDBSessionRepository,
    storage: MongoDBStorage,
) -> None:
    _store_sessions(mongo_client, database_name, repository)
    first = migrate_sessions(repository, storage, session_ids=["chat"])
    assert (first.sessions, first.agents, first.skipped) == (1, 2, 0)
    again = migrate_sessions(repository, storage, session_ids=["chat", "summary", "gone"])
    assert (again.sessions, again.agents, again.skipped, again.missing) == (2, 2, 2, ["gone"])
    forced = migrate_sessions(repository, storage, session_ids=("chat",), overwrite=True)
    assert (forced.agents, forced.skipped) == (2, 0)
    keys = asyncio.run(storage.list(""))
    assert keys == [
        "session/chat/scopes/agent/assistant/snapshots/snapshot_latest.json",
        "session/chat/scopes/agent/helper/snapshots/snapshot_latest.json",
        "session/summary/scopes/agent/keeper/snapshots/snapshot_latest.json",
        "session/summary/scopes/agent/summarizer/snapshots/snapshot_latest.json",
    ]
    assert mongo_client[database_name][COLLECTION].count_documents({}) == 2  # the message log is left as it was


def test_agents_of_an_unknown_conversation_manager_need_a_factory(
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    repository: MongoDBSessionRepository,
    storage: MongoDBStorage,
) -> None:
    manager = _message_log(mongo_client, database_name, "custom")
    Agent(
        agent_id="a",
        model=ScriptedModel([text("Hi.")]),
        conversation_manager=CustomWindow(),
        callback_handler=None,
        session_manager=manager,
    )("Hello")
    manager.close()
    with pytest.raises(SessionValidationError, match="CustomWindow"):
        migrate_sessions(repository, storage)
    report = migrate_sessions(repository, storage, conversation_manager=lambda session_id, agent: CustomWindow())
    assert report.agents == 1
    restored = Agent(
        agent_id="a",
        model=ScriptedModel([]),
        conversation_manager=CustomWindow(),
        callback_handler=None,
        session_manager=SnapshotSessionManager("custom", storage=storage),
    )
    assert [m["content"][0]["text"] for m in restored.messages] == ["Hello", "Hi."]


@pytest.mark.parametrize("kind", ["graph", "swarm"])
def test_migrated_graph_and_swarm_resume_where_the_message_log_would(
    kind: str,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    repository: MongoDBSessionRepository,
    storage: MongoDBStorage,
) -> None:
    _interrupt_graph_and_swarm(RepositorySessionManager(session_id="team", session_repository=repository))
    report = migrate_sessions(repository, storage)
    assert (report.sessions, report.agents, report.multi_agents) == (1, 0, 2)

    def resume(manager: Any) -> dict[str, Any]:
        if kind == "graph":
            models = {"research": ScriptedModel([]), "write": ScriptedModel(["Tides, an article."])}
            result = build_graph(models, manager)("Write about tides")
            order = [node.node_id for node in result.execution_order]
        else:
            models = {"triage": ScriptedModel([]), "billing": ScriptedModel(["Refund issued."])}
            result = build_swarm(models, manager)("I want a refund for order A-1")
            order = [node.node_id for node in result.node_history]
        calls = {name: len(model.calls) for name, model in models.items()}
        texts = {name: str(node.result).strip() for name, node in result.results.items()}
        return {"calls": calls, "order": order, "texts": texts}

    from_snapshot = resume(SnapshotSessionManager("team", storage=storage))
    from_log = resume(RepositorySessionManager(session_id="team", session_repository=repository))
    assert from_snapshot == from_log
    assert from_snapshot["calls"] == ({"research": 0, "write": 1} if kind == "graph" else {"triage": 0, "billing": 1})
