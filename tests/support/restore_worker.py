"""Restore Strands agents, a Graph or a Swarm from stored sessions in a process of their own.

The end-to-end tests (``tests/integration/test_end_to_end_restore.py``) run a scripted conversation
in the test process and then ask this module, in a new process, to rebuild the agents from storage
only and dump what came back. Both sides use the helpers defined here (session managers, conversation
managers, Graph and Swarm topologies, the JSON encoding), so the restore is configured exactly like
the live run.

Run from the repository root::

    python -m tests.support.restore_worker REQUEST.json   # one restore in this process
    python -m tests.support.restore_worker --serve        # one forked process per request (see serve)

A request is a JSON file naming an ``output`` file; the dump is written there as JSON (``bytes``
tagged and base64-encoded, see :func:`to_jsonable`).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import bson
from pymongo import MongoClient, monitoring
from strands import Agent
from strands.agent.conversation_manager import (
    ConversationManager,
    NullConversationManager,
    SlidingWindowConversationManager,
)
from strands.models.model import Model
from strands.multiagent import GraphBuilder, Swarm
from strands.multiagent.graph import Graph
from strands.session.file_session_manager import FileSessionManager
from strands.session.repository_session_manager import RepositorySessionManager

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from tests.support.scripted_model import ScriptedModel

__all__ = [
    "BACKENDS",
    "COLLECTIONS",
    "FILE",
    "GRAPH_ID",
    "MANAGER",
    "MONGO_BACKENDS",
    "REPOSITORY",
    "SWARM_ID",
    "agent_snapshot",
    "build_graph",
    "build_swarm",
    "from_jsonable",
    "make_conversation_manager",
    "open_session_manager",
    "restore",
    "to_jsonable",
]

#: ``MongoDBSessionRepository`` inside Strands' own ``RepositorySessionManager``.
REPOSITORY = "repository"
#: Our ``MongoDBSessionManager``.
MANAGER = "manager"
#: Strands' ``FileSessionManager``, the reference.
FILE = "file"
BACKENDS = (REPOSITORY, MANAGER, FILE)
MONGO_BACKENDS = (REPOSITORY, MANAGER)
#: One collection per MongoDB backend, so both can hold the same session id in one database.
COLLECTIONS = {REPOSITORY: "repository_sessions", MANAGER: "manager_sessions"}

GRAPH_ID = "pipeline"
SWARM_ID = "helpdesk"

_BYTES_TAG = "__restore_worker_bytes__"
_CHILD_TIMEOUT_SECONDS = 120


# ---------------------------------------------------------------------------------------- shared helpers


def open_session_manager(
    backend: str, session_id: str, *, client: MongoClient[Any], database_name: str, storage_dir: str
) -> RepositorySessionManager:
    """Open the session manager of ``backend`` for ``session_id`` (a borrowed ``client`` for MongoDB)."""
    if backend == REPOSITORY:
        repository = MongoDBSessionRepository(
            client=client, database_name=database_name, collection_name=COLLECTIONS[REPOSITORY]
        )
        return RepositorySessionManager(session_id=session_id, session_repository=repository)
    if backend == MANAGER:
        return MongoDBSessionManager(
            session_id, client=client, database_name=database_name, collection_name=COLLECTIONS[MANAGER]
        )
    if backend == FILE:
        return FileSessionManager(session_id, storage_dir=storage_dir)
    raise ValueError(f"unknown backend {backend!r}")


def make_conversation_manager(spec: Mapping[str, Any]) -> ConversationManager:
    """Build a conversation manager from a JSON-able spec.

    ``{"type": "default"}`` is the Agent's default (``SlidingWindowConversationManager()``),
    ``{"type": "sliding", "window_size": n}`` a sliding window of ``n``, ``{"type": "null"}`` keeps
    everything.
    """
    kind = spec.get("type", "default")
    if kind == "default":
        return SlidingWindowConversationManager()
    if kind == "sliding":
        return SlidingWindowConversationManager(window_size=int(spec["window_size"]))
    if kind == "null":
        return NullConversationManager()
    raise ValueError(f"unknown conversation manager spec {spec!r}")


def agent_snapshot(agent: Agent) -> dict[str, Any]:
    """Everything a restore must bring back, deep-copied so later turns cannot change it."""
    return copy.deepcopy(
        {
            "messages": agent.messages,
            "state": agent.state.get(),
            "conversation_manager_state": agent.conversation_manager.get_state(),
            "interrupt_state": agent._interrupt_state.to_dict(),
            "model_state": agent._model_state,
        }
    )


def to_jsonable(value: Any) -> Any:
    """Encode ``value`` for JSON, losslessly: ``bytes`` become a tagged base64 object.

    Only JSON's own types and ``bytes`` are accepted; anything else (a tuple, a datetime, a dict
    with non-string keys) raises ``TypeError`` rather than being silently converted, so a restore
    that changed a type cannot compare equal.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict key {key!r} is not a string")
            encoded[key] = to_jsonable(item)
        return encoded
    raise TypeError(f"cannot encode {type(value).__name__} value {value!r}")


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable`."""
    if isinstance(value, list):
        return [from_jsonable(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {_BYTES_TAG}:
            return base64.b64decode(value[_BYTES_TAG])
        return {key: from_jsonable(item) for key, item in value.items()}
    return value


def build_graph(models: Mapping[str, Model], session_manager: RepositorySessionManager) -> Graph:
    """A two-step pipeline, ``research -> write``, persisted through ``session_manager``."""
    builder = GraphBuilder()
    builder.add_node(Agent(name="researcher", model=models["research"], callback_handler=None), "research")
    builder.add_node(Agent(name="writer", model=models["write"], callback_handler=None), "write")
    builder.add_edge("research", "write")
    builder.set_entry_point("research")
    builder.set_execution_timeout(120)
    builder.set_graph_id(GRAPH_ID)
    builder.set_session_manager(session_manager)
    return builder.build()


def build_swarm(models: Mapping[str, Model], session_manager: RepositorySessionManager) -> Swarm:
    """A two-agent swarm, ``triage`` (entry) and ``billing``, persisted through ``session_manager``."""
    triage = Agent(name="triage", model=models["triage"], callback_handler=None)
    billing = Agent(name="billing", model=models["billing"], callback_handler=None)
    return Swarm([triage, billing], entry_point=triage, session_manager=session_manager, id=SWARM_ID)


# ---------------------------------------------------------------------------------------- the restore


class _ReadRecorder(monitoring.CommandListener):
    """Records every read (``find``, ``aggregate``) a client sends and how many messages its reply carries."""

    def __init__(self) -> None:
        self._pending: dict[int, dict[str, Any]] = {}
        self.reads: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("find", "aggregate"):
            self._pending[event.request_id] = {
                "command": event.command_name,
                "collection": event.command.get(event.command_name),
                "filter": event.command.get("filter"),
                "projection": event.command.get("projection"),
                "pipeline": event.command.get("pipeline"),
            }

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        command = self._pending.pop(event.request_id, None)
        if command is None:
            return
        batch = event.reply.get("cursor", {}).get("firstBatch", [])
        messages_per_agent = {
            agent_key: len(agent.get("messages", []))
            for document in batch
            for agent_key, agent in (document.get("agents") or {}).items()
            if isinstance(agent, dict) and "messages" in agent
        }
        for document in batch:
            # The repository's message reads answer {"agent": {"messages": [...], ...}} for one agent,
            # named in the pipeline's $getField.
            agent = document.get("agent")
            if isinstance(agent, dict) and "messages" in agent:
                messages_per_agent[_agent_key_of(command["pipeline"])] = len(agent["messages"])
        self.reads.append(
            {**command, "reply_bytes": len(bson.encode(event.reply)), "messages_per_agent": messages_per_agent}
        )

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._pending.pop(event.request_id, None)


def _agent_key_of(pipeline: Any) -> str:
    """The encoded agent id a message-read pipeline asks for (the first ``$getField`` on ``$agents``)."""
    stack = [pipeline]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            getter = item.get("$getField")
            if isinstance(getter, dict) and getter.get("input") == "$agents":
                return str(getter["field"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return "?"


def _restore_agents(request: Mapping[str, Any], manager: RepositorySessionManager) -> dict[str, Any]:
    snapshots = {}
    for spec in request["agents"]:
        agent = Agent(
            model=ScriptedModel([]),  # never called: a restore needs no model
            agent_id=spec["agent_id"],
            conversation_manager=make_conversation_manager(spec.get("conversation_manager", {})),
            session_manager=manager,
            callback_handler=None,
        )
        snapshots[spec["agent_id"]] = agent_snapshot(agent)
    return snapshots


def _restore_multi_agent(
    request: Mapping[str, Any], open_manager: Callable[[], RepositorySessionManager]
) -> dict[str, Any]:
    """Re-create the Graph or Swarm (``deserialize_state`` runs), resume it, then re-create it once more."""
    kind = request["kind"]
    build = build_graph if kind == "graph" else build_swarm
    multi_agent_id = GRAPH_ID if kind == "graph" else SWARM_ID
    models = {name: ScriptedModel(script) for name, script in request["scripts"].items()}

    manager = open_manager()
    orchestrator: Any = build(models, manager)
    restored: dict[str, Any] = {
        "resume_from_session": orchestrator._resume_from_session,
        "restored_state": orchestrator.serialize_state(),
    }
    if kind == "graph":
        restored["resume_nodes"] = [node.node_id for node in orchestrator._resume_next_nodes]
    else:
        restored["resume_nodes"] = [orchestrator.state.current_node.node_id]

    result = orchestrator(request["task"])
    restored["result"] = {
        "status": result.status.value,
        "order": [node.node_id for node in (result.execution_order if kind == "graph" else result.node_history)],
        "texts": {name: str(node_result.result) for name, node_result in result.results.items()},
    }
    restored["model_calls"] = {name: len(model.calls) for name, model in models.items()}
    restored["stored_after_resume"] = manager.session_repository.read_multi_agent(manager.session_id, multi_agent_id)

    # A finished run is not resumed: a new instance starts from scratch (the reset branch of deserialize_state).
    again: Any = build({name: ScriptedModel([]) for name in models}, open_manager())
    restored["reopened"] = {
        "resume_from_session": again._resume_from_session,
        "status": (again.state.status if kind == "graph" else again.state.completion_status).value,
    }
    return restored


def restore(request: Mapping[str, Any]) -> dict[str, Any]:
    """Restore every backend named in ``request`` and return the dump (not yet JSON-encoded)."""
    results: dict[str, Any] = {}
    reads: dict[str, Any] = {}
    clients: list[MongoClient[Any]] = []
    try:
        for backend in request["backends"]:
            recorder = _ReadRecorder()
            client: MongoClient[Any] | None = None
            if backend in MONGO_BACKENDS:
                client = MongoClient(request["mongodb_uri"], event_listeners=[recorder])
                clients.append(client)

            def open_manager(backend: str = backend, client: Any = client) -> RepositorySessionManager:
                manager = open_session_manager(
                    backend,
                    request["session_id"],
                    client=client,
                    database_name=request["database_name"],
                    storage_dir=request["storage_dir"],
                )
                if manager._is_new_session:  # the manager just created it: there was nothing to restore
                    raise LookupError(f"backend={backend}: session {request['session_id']!r} was not found")
                return manager

            if request["kind"] == "agents":
                results[backend] = _restore_agents(request, open_manager())
            else:
                results[backend] = _restore_multi_agent(request, open_manager)
            reads[backend] = recorder.reads
    finally:
        for client in clients:
            client.close()
    return {"results": results, "reads": reads}


def run_request(request_file: str) -> None:
    """Restore what the request file asks for and write the dump to its ``output`` file."""
    request = json.loads(Path(request_file).read_text(encoding="utf-8"))
    dump = restore(request)
    dump["process"] = {"pid": os.getpid()}
    Path(request["output"]).write_text(json.dumps(to_jsonable(dump), ensure_ascii=False), encoding="utf-8")


def serve() -> int:
    """Serve restores: one request file path per stdin line, each restored in a new forked process.

    Importing Strands takes seconds; this process pays it once and then forks a fresh child per
    request, before any session, client or agent exists in it, so each restore still starts from
    nothing but storage. For each request one line ``"<pid> <exit code>"`` is written to stdout; the
    child's stdout and stderr go to the request's ``log`` file. Ends at end of input.
    """
    for line in sys.stdin:
        request_file = line.strip()
        if not request_file:
            continue
        log_file = json.loads(Path(request_file).read_text(encoding="utf-8"))["log"]
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                signal.alarm(_CHILD_TIMEOUT_SECONDS)  # a stuck restore dies instead of hanging the tests
                run_request(request_file)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"{pid} {os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    """``REQUEST.json``: restore once in this process; ``--serve``: see :func:`serve`."""
    if argv == ["--serve"]:
        return serve()
    if len(argv) != 1:
        print("usage: python -m tests.support.restore_worker (REQUEST.json | --serve)", file=sys.stderr)
        return 2
    run_request(argv[0])
    return 0


if __name__ == "__main__":
    from tests.support.command_audit import install_in_worker

    install_in_worker()
    sys.exit(main(sys.argv[1:]))
