"""Strands' ``SnapshotSessionManager`` on ``MongoDBStorage``, end to end, restored in a fresh process.

Agents talk in this process (sync calls, which Strands runs on its bridge, and ``invoke_async`` on
one loop), with an immutable snapshot after every turn and a 13 MiB image in one conversation (a
17 MB snapshot: chunked). A Graph fails at its second node and a Swarm dies inside its second
agent (the same runs on the SDK's ``LocalFileStorage`` are the reference). Then a new process (``tests/support/storage_snapshot_worker.py``) rebuilds all of it from
MongoDB alone: the latest snapshots equal the live agents, every immutable snapshot equals the agent
after its turn, the Graph and the Swarm resume at the node that had not finished, as they do from the reference, and
``delete_session`` leaves nothing under the session.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from strands import Agent, tool
from strands.session import SnapshotSessionManager
from strands.storage import LocalFileStorage

from mongodb_session_manager import MongoDBStorage
from mongodb_session_manager.storage import _layout as layout
from tests.support.restore_worker import agent_snapshot, from_jsonable, to_jsonable
from tests.support.scripted_model import ScriptedModel, text, tool_call
from tests.support.storage_helpers import Stored
from tests.support.storage_snapshot_worker import build_graph, build_swarm, open_manager, resume

ROOT = Path(__file__).resolve().parents[2]
SESSION = "snap-e2e"
IMAGE = os.urandom(13 * 1024 * 1024)


class Crash(BaseException):
    """Stands for the process dying mid-run: nothing in Strands catches it."""


@tool
def lookup(city: str) -> str:
    """Look up the weather of a city."""
    return f"It is sunny in {city}."


TASKS = {"graph": "Write about tides", "swarm": "I want a refund for order A-1"}
RESUME: dict[str, dict[str, list[Any]]] = {
    "graph": {"research": [], "write": ["Tides, an article."]},
    "swarm": {"triage": [], "billing": ["Refund issued."]},
}


def interrupt_runs(manager: SnapshotSessionManager) -> None:
    """A Graph whose second node fails; a Swarm that dies inside its second agent (no final save)."""
    graph = build_graph(
        {"research": ScriptedModel([text("Tides follow the moon.")]), "write": ScriptedModel([RuntimeError("down")])},
        manager,
    )
    with pytest.raises(RuntimeError, match="down"):
        graph(TASKS["graph"])
    handoff = {"agent_name": "billing", "message": "refund A-1", "context": {"order": "A-1"}}
    triage = ScriptedModel([tool_call("handoff_to_agent", handoff, tool_use_id="h1"), text("Handed over.")])
    swarm = build_swarm({"triage": triage, "billing": ScriptedModel([Crash("power cut")])}, manager)
    with pytest.raises(Crash):
        swarm(TASKS["swarm"])


def _canonical(value: Any) -> str:
    return json.dumps(to_jsonable(value), sort_keys=False, ensure_ascii=False)


def test_agents_graph_and_swarm_restore_from_mongodb_in_a_new_process(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]], tmp_path: Path
) -> None:
    live: dict[str, Any] = {}

    # An agent driven synchronously (Strands' bridge), an immutable snapshot after each turn.
    manager = open_manager(mongodb_uri, database_name, SESSION, snapshot_trigger=lambda **_: True)
    model = ScriptedModel([text("Hello Ada."), tool_call("lookup", {"city": "Oslo"}, tool_use_id="t1"), text("Sunny.")])
    agent = Agent(agent_id="assistant", model=model, tools=[lookup], callback_handler=None, session_manager=manager)
    agent.state.set("preferences", {"units": "metric", "ü": [1, 2.5]})
    history = []
    for prompt in ("My name is Ada.", "Weather in Oslo?"):
        agent(prompt)
        history.append(agent_snapshot(agent))
    live["assistant"] = history

    # A 13 MiB image in the prompt: its snapshot is ~17.5 MB of JSON (base64), stored in chunks.
    vision = Agent(
        agent_id="vision",
        model=ScriptedModel([text("A nice picture.")]),
        callback_handler=None,
        session_manager=open_manager(mongodb_uri, database_name, SESSION),
    )
    vision([{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": IMAGE}}}])
    live["vision"] = agent_snapshot(vision)
    key = f"session/{SESSION}/scopes/agent/vision/snapshots/snapshot_latest.json"
    document = Stored(mongo_client, database_name).document(key)
    assert document is not None and document["size"] > 17_000_000 and document["chunks"] == 3

    # An agent driven with invoke_async on one loop (the AsyncMongoClient path).
    async def conversation() -> dict[str, Any]:
        asynchronous = Agent(
            agent_id="async_agent",
            model=ScriptedModel([text("One."), text("Two.")]),
            callback_handler=None,
            session_manager=open_manager(mongodb_uri, database_name, SESSION),
        )
        await asynchronous.invoke_async("first")
        await asynchronous.invoke_async("second")
        return agent_snapshot(asynchronous)

    live["async_agent"] = asyncio.run(conversation())

    # A Graph whose second node fails, a Swarm that dies inside its second agent; the same runs on
    # the SDK's LocalFileStorage give the reference of what a resume must do.
    interrupt_runs(open_manager(mongodb_uri, database_name, SESSION))
    reference_dir = str(tmp_path / "reference")
    interrupt_runs(SnapshotSessionManager(SESSION, storage=LocalFileStorage(reference_dir)))
    reference = {
        kind: resume(
            SnapshotSessionManager(SESSION, storage=LocalFileStorage(reference_dir)), kind, scripts, TASKS[kind]
        )
        for kind, scripts in RESUME.items()
    }

    request = {
        "uri": mongodb_uri,
        "database": database_name,
        "session_id": SESSION,
        "agents": ["assistant", "vision", "async_agent"],
        "resume": RESUME,
        "task": TASKS,
        "delete_session": True,
        "output": str(tmp_path / "restored.json"),
    }
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    process = subprocess.run(
        [sys.executable, "-m", "tests.support.storage_snapshot_worker", str(tmp_path / "request.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert process.returncode == 0, process.stderr
    restored = from_jsonable(json.loads((tmp_path / "restored.json").read_text(encoding="utf-8")))

    agents = restored["agents"]
    assert _canonical(agents["assistant"]["latest"]) == _canonical(history[-1])
    assert len(agents["assistant"]["ids"]) == 2  # one immutable snapshot per turn, oldest first
    assert [_canonical(s) for s in agents["assistant"]["history"]] == [_canonical(s) for s in history]
    assert agents["assistant"]["latest"]["state"] == {"preferences": {"units": "metric", "ü": [1, 2.5]}}
    assert _canonical(agents["vision"]["latest"]) == _canonical(live["vision"])
    assert agents["vision"]["latest"]["messages"][0]["content"][1]["image"]["source"]["bytes"] == IMAGE
    assert _canonical(agents["async_agent"]["latest"]) == _canonical(live["async_agent"])
    assert agents["async_agent"]["ids"] == []

    # Only the node that had not finished runs again, exactly as with the SDK's own file storage.
    assert restored["graph"]["model_calls"] == {"research": 0, "write": 1}
    assert restored["swarm"]["model_calls"] == {"triage": 0, "billing": 1}
    assert {kind: restored[kind] for kind in RESUME} == reference

    assert restored["left_after_delete"] == []
    stored = Stored(mongo_client, database_name)
    assert stored.chunk_ids() == []  # the image snapshot's chunks went with it
    assert stored.pending() == {}


def test_agent_level_storage_backs_the_snapshot_manager_memory_and_offloaded_context(
    mongodb_uri: str, database_name: str
) -> None:
    """``Agent(storage=...)``: the snapshot manager without its own storage, the context offloader and
    the file memory store all find the MongoDB storage and keep to their own namespaces."""
    from strands.vended_memory_stores.file_memory_store import FileMemoryStore
    from strands.vended_plugins.context_offloader import ContextOffloader

    storage = MongoDBStorage(mongodb_uri, database_name=database_name)

    @tool
    def read_report() -> str:
        """Read the long report."""
        return "quarterly figures " * 4000

    model = ScriptedModel([tool_call("read_report", {}, tool_use_id="r1"), text("Done reading.")])
    agent = Agent(
        agent_id="reader",
        model=model,
        tools=[read_report],
        callback_handler=None,
        storage=storage,
        session_manager=SnapshotSessionManager("shared"),
        plugins=[ContextOffloader(max_result_tokens=500, preview_tokens=50)],
    )
    agent("Read the report.")
    memory = FileMemoryStore(name="facts", storage=storage)

    async def check() -> None:
        await memory.add("# User preferences\nThe user prefers dark mode.")
        await memory.add("# Project\nThe project uses OAuth.")
        found = await memory.search("dark mode preferences")
        assert [entry.content for entry in found][:1] == ["# User preferences\nThe user prefers dark mode."]
        keys = await storage.list("")
        assert "session/shared/scopes/agent/reader/snapshots/snapshot_latest.json" in keys
        assert "memory/facts/user-preferences.md" in keys and "memory/facts/project.md" in keys
        offloaded = [key for key in keys if key.startswith("offloader/")]
        assert offloaded == ["offloader/r1_0"]
        framed = await storage.read(offloaded[0])
        assert framed is not None and b"quarterly figures" in framed and len(framed) > 60_000

    asyncio.run(check())
    # the snapshot holds the offloaded result's preview and reference, not the result
    snapshot = asyncio.run(storage.read("session/shared/scopes/agent/reader/snapshots/snapshot_latest.json"))
    assert snapshot is not None and b"r1_0" in snapshot and len(snapshot) < 20_000
    storage.close()


def test_namespaced_storage_with_expiry_as_the_session_root(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    """A view passed to the snapshot manager is used as the sessions' root, as Strands documents."""
    storage = MongoDBStorage(mongodb_uri, database_name=database_name)
    sessions = storage.namespace("session", ttl=3600)
    agent = Agent(
        agent_id="a",
        model=ScriptedModel([text("Hi.")]),
        callback_handler=None,
        session_manager=SnapshotSessionManager("s", storage=sessions),
    )
    agent("Hello")
    keys = asyncio.run(storage.list(""))
    assert keys == ["session/s/scopes/agent/a/snapshots/snapshot_latest.json"]
    document = mongo_client[database_name]["storage"].find_one({"_id": keys[0]}, {"expires": 1})
    assert document is not None and layout.aware(document["expires"]) < layout.NO_EXPIRY
    storage.close()
