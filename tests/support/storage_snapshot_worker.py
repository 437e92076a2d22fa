"""Restore agents, a Graph and a Swarm from ``SnapshotSessionManager`` + ``MongoDBStorage`` in a fresh
process, and dump what came back.

``tests/integration/test_storage_snapshots.py`` runs the conversations in the test process, then::

    python -m tests.support.storage_snapshot_worker REQUEST.json

which rebuilds everything from MongoDB alone (same session id, agent ids, ids of the orchestrators)
and writes the dump (JSON, bytes tagged) to the request's ``output`` file.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strands import Agent
from strands.multiagent import GraphBuilder, Swarm
from strands.multiagent.graph import Graph
from strands.session import SnapshotSessionManager

from mongodb_session_manager import MongoDBStorage
from tests.support.restore_worker import agent_snapshot, to_jsonable
from tests.support.scripted_model import ScriptedModel

GRAPH_ID = "pipeline"
SWARM_ID = "helpdesk"


def open_manager(uri: str, database: str, session_id: str, **kwargs: Any) -> SnapshotSessionManager:
    """The snapshot manager of a session, over a ``MongoDBStorage`` of ``database``."""
    return SnapshotSessionManager(session_id, storage=MongoDBStorage(uri, database_name=database), **kwargs)


def build_graph(models: Mapping[str, ScriptedModel], manager: SnapshotSessionManager) -> Graph:
    """``research -> write``, persisted through ``manager``."""
    builder = GraphBuilder()
    builder.add_node(Agent(name="researcher", model=models["research"], callback_handler=None), "research")
    builder.add_node(Agent(name="writer", model=models["write"], callback_handler=None), "write")
    builder.add_edge("research", "write")
    builder.set_entry_point("research")
    builder.set_execution_timeout(120)
    builder.set_graph_id(GRAPH_ID)
    builder.set_session_manager(manager)
    return builder.build()


def build_swarm(models: Mapping[str, ScriptedModel], manager: SnapshotSessionManager) -> Swarm:
    """``triage`` (entry) hands off to ``billing``, persisted through ``manager``."""
    triage = Agent(name="triage", model=models["triage"], callback_handler=None)
    billing = Agent(name="billing", model=models["billing"], callback_handler=None)
    return Swarm([triage, billing], entry_point=triage, session_manager=manager, id=SWARM_ID)


def _restore_agent(request: Mapping[str, Any], agent_id: str) -> dict[str, Any]:
    manager = open_manager(request["uri"], request["database"], request["session_id"])
    agent = Agent(agent_id=agent_id, model=ScriptedModel([]), callback_handler=None, session_manager=manager)
    latest = agent_snapshot(agent)
    ids = asyncio.run(manager.list_snapshot_ids(agent))
    history = []
    for snapshot_id in ids:
        assert asyncio.run(manager.restore_snapshot(agent, snapshot_id=snapshot_id))
        history.append(agent_snapshot(agent))
    return {"latest": latest, "ids": ids, "history": history}


def resume(manager: SnapshotSessionManager, kind: str, scripts: Mapping[str, list[Any]], task: str) -> dict[str, Any]:
    """Re-create the Graph or Swarm with ``manager`` and run ``task``: what ran, and how it ended."""
    models = {name: ScriptedModel(script) for name, script in scripts.items()}
    orchestrator: Any = build_graph(models, manager) if kind == "graph" else build_swarm(models, manager)
    result = orchestrator(task)
    order = result.execution_order if kind == "graph" else result.node_history
    return {
        "status": result.status.value,
        "order": [node.node_id for node in order],
        "model_calls": {name: len(model.calls) for name, model in models.items()},
    }


def restore(request: Mapping[str, Any]) -> dict[str, Any]:
    dump: dict[str, Any] = {"agents": {agent_id: _restore_agent(request, agent_id) for agent_id in request["agents"]}}
    for kind, scripts in request.get("resume", {}).items():
        manager = open_manager(request["uri"], request["database"], request["session_id"])
        dump[kind] = resume(manager, kind, scripts, request["task"][kind])
    if request.get("delete_session"):
        manager = open_manager(request["uri"], request["database"], request["session_id"])
        asyncio.run(manager.delete_session())
        storage = MongoDBStorage(request["uri"], database_name=request["database"])
        dump["left_after_delete"] = asyncio.run(storage.list(f"session/{request['session_id']}/"))
    return dump


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    dump = restore(request)
    Path(request["output"]).write_text(json.dumps(to_jsonable(dump), ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    from tests.support.command_audit import install_in_worker

    install_in_worker()
    sys.exit(main(sys.argv[1:]))
