"""End to end: a real ``strands.Agent`` (scripted model, no network) persisted, then restored in a new process.

Every scenario runs the same scripted conversation three times, through

* ``repository``: ``MongoDBSessionRepository`` inside Strands' own ``RepositorySessionManager``,
* ``manager``: our ``MongoDBSessionManager``,
* ``file``: Strands' ``FileSessionManager`` (the reference),

and then a new process (forked per restore by ``python -m tests.support.restore_worker --serve``,
which pays Strands' import time once) rebuilds the agents from storage alone (same session id,
agent id and conversation manager) and dumps what came back. Each MongoDB
restore must be identical to its own live agent at the end of the conversation (same values, same
types, same key order, bytes included) and, once the values that legitimately differ between two
runs are normalised, identical to what the ``FileSessionManager`` restore gives.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import MongoClient
from strands import Agent, tool
from strands.models.model import Model
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.content import ContentBlock, Message
from strands.types.tools import ToolContext

from mongodb_session_manager import MongoDBSessionManager
from mongodb_session_manager._documents import encode_field_name
from mongodb_session_manager._overflow import MOVE_BATCH
from tests.support.restore_worker import (
    BACKENDS,
    COLLECTIONS,
    FILE,
    GRAPH_ID,
    MONGO_BACKENDS,
    SWARM_ID,
    agent_snapshot,
    build_graph,
    build_swarm,
    from_jsonable,
    make_conversation_manager,
    open_session_manager,
    to_jsonable,
)
from tests.support.scripted_model import ScriptedModel, response, text, tool_call

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CM: dict[str, Any] = {"type": "default"}

# ------------------------------------------------------------------------------------------ comparison

# What legitimately differs between two runs of the same script, and nothing else, is normalised
# before a MongoDB restore is compared with the FileSessionManager restore:
#   * "tracking_id": the SDK gives every message a fresh UUID4 in each run. Each id is replaced by the
#     ordinal of its first appearance, so *which* messages share an id is still compared.
#   * "execution_time", "latencyMs": durations. The scripted model reports a fixed latencyMs, but
#     Graph and Swarm record wall-clock node time under both. The value must still be a number.
#   * "timeToFirstByteMs": a duration the SDK adds to a message's metrics only when it is at least
#     1 ms, so even its presence depends on timing: it is removed.
# Timestamps (created_at / updated_at) never appear in these dumps, so they need no rule. A MongoDB
# restore compared with its own live agent is compared with no normalisation at all.
_ID_FIELDS = frozenset({"tracking_id"})
_DURATION_FIELDS = frozenset({"execution_time", "latencyMs"})
_OPTIONAL_DURATION_FIELDS = frozenset({"timeToFirstByteMs"})


def normalise(value: Any) -> Any:
    """Replace the run-specific values described above; everything else is left exactly as it is."""
    ids: dict[str, str] = {}

    def walk(item: Any) -> Any:
        if isinstance(item, list):
            return [walk(element) for element in item]
        if not isinstance(item, dict):
            return item
        result: dict[str, Any] = {}
        for key, element in item.items():
            if key in _OPTIONAL_DURATION_FIELDS and isinstance(element, int | float):
                continue
            if key in _ID_FIELDS and isinstance(element, str):
                result[key] = ids.setdefault(element, f"<id {len(ids)}>")
            elif key in _DURATION_FIELDS and isinstance(element, int | float) and not isinstance(element, bool):
                result[key] = "<duration>"
            else:
                result[key] = walk(element)
        return result

    return walk(value)


def canonical(value: Any) -> str:
    """JSON text that differs whenever a value, a type (1, 1.0, True) or a key order differs."""
    return json.dumps(to_jsonable(value), ensure_ascii=False)


def assert_identical(actual: Any, expected: Any, what: str = "") -> None:
    assert actual == expected, what  # readable diff first
    assert canonical(actual) == canonical(expected), f"{what}: equal values, but types or key order differ"


# ------------------------------------------------------------------------------------------ harness


@dataclass
class Conversation:
    """One run of a scenario against one backend."""

    backend: str
    session_manager: RepositorySessionManager
    agents: dict[str, Agent] = field(default_factory=dict)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def agent(
        self,
        agent_id: str,
        model: Model | list[Any],
        *,
        tools: tuple[Any, ...] = (),
        conversation_manager: dict[str, Any] = DEFAULT_CM,
    ) -> Agent:
        agent = Agent(
            model=model if isinstance(model, Model) else ScriptedModel(model),
            agent_id=agent_id,
            tools=list(tools),
            conversation_manager=make_conversation_manager(conversation_manager),
            session_manager=self.session_manager,
            callback_handler=None,
        )
        self.agents[agent_id] = agent
        self.specs[agent_id] = {"agent_id": agent_id, "conversation_manager": conversation_manager}
        return agent


Script = Callable[[Conversation], None]


class RestoreServer:
    """``python -m tests.support.restore_worker --serve``: a new process per restore, without paying
    Strands' import time (seconds) for each one. See ``restore_worker.serve``."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.restore_worker", "--serve"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )

    def run(self, request_file: Path) -> tuple[int, int]:
        """Have ``request_file`` restored in a new process; return its pid and exit code."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{request_file}\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        assert reply, f"the restore server died:\n{self.log.read_text(encoding='utf-8')}"
        pid, exit_code = reply.split()
        return int(pid), int(exit_code)

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self._log_file.close()


@pytest.fixture(scope="module")
def restore_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestoreServer]:
    server = RestoreServer(tmp_path_factory.mktemp("restore-server") / "server.log")
    try:
        yield server
    finally:
        server.close()


@dataclass
class Harness:
    server: RestoreServer
    client: MongoClient[dict[str, Any]]
    mongodb_uri: str
    database_name: str
    storage_dir: Path
    work_dir: Path
    session_id: str = "e2e-session"
    specs: list[dict[str, Any]] = field(default_factory=list)

    def open(self, backend: str) -> RepositorySessionManager:
        return open_session_manager(
            backend,
            self.session_id,
            client=self.client,
            database_name=self.database_name,
            storage_dir=str(self.storage_dir),
        )

    def run(self, script: Script) -> dict[str, dict[str, Any]]:
        """Run ``script`` once per backend; return each backend's live snapshots by agent id.

        The three runs are independent (own agents, models and storage) and run side by side, which
        roughly halves the wall time on a server that is slow per write.
        """
        with ThreadPoolExecutor(max_workers=len(BACKENDS)) as pool:
            futures = {backend: pool.submit(self._run_on, backend, script) for backend in BACKENDS}
            runs = {backend: future.result() for backend, future in futures.items()}
        specs = [run.specs for run in runs.values()]
        assert all(spec == specs[0] for spec in specs), "the script must open the same agents on every backend"
        self.specs = list(specs[0].values())
        return {
            backend: {agent_id: agent_snapshot(agent) for agent_id, agent in run.agents.items()}
            for backend, run in runs.items()
        }

    def _run_on(self, backend: str, script: Script) -> Conversation:
        manager = self.open(backend)
        conversation = Conversation(backend, manager)
        try:
            script(conversation)
        finally:
            if isinstance(manager, MongoDBSessionManager):
                manager.close()
        return conversation

    def restore(self, **request: Any) -> dict[str, Any]:
        """Restore all backends in one new process; return its decoded dump."""
        output = self.work_dir / "restored.json"
        log = self.work_dir / "restore.log"
        request_file = self.work_dir / "request.json"
        request = {
            "kind": "agents",
            "agents": self.specs,
            "backends": list(BACKENDS),
            "mongodb_uri": self.mongodb_uri,
            "database_name": self.database_name,
            "storage_dir": str(self.storage_dir),
            "session_id": self.session_id,
            "output": str(output),
            "log": str(log),
            **request,
        }
        request_file.write_text(json.dumps(request), encoding="utf-8")
        pid, exit_code = self.server.run(request_file)
        assert exit_code == 0, f"restore process {pid} failed:\n{log.read_text(encoding='utf-8')}"
        dump: dict[str, Any] = from_jsonable(json.loads(output.read_text(encoding="utf-8")))
        assert dump["process"]["pid"] == pid != os.getpid()
        return dump

    def stored_session(self, backend: str) -> dict[str, Any]:
        """The raw MongoDB document of the session, as pymongo decodes it."""
        document = self.client[self.database_name][COLLECTIONS[backend]].find_one({"_id": self.session_id})
        assert document is not None
        return document

    def assert_restores_match(self, live: dict[str, dict[str, Any]], restored: dict[str, Any]) -> None:
        """Each restore equals its own live run; each MongoDB restore equals the file restore, normalised."""
        results = restored["results"]
        assert set(results) == set(BACKENDS)
        for backend in BACKENDS:
            assert list(results[backend]) == [spec["agent_id"] for spec in self.specs]
            for agent_id, snapshot in live[backend].items():
                for name, value in snapshot.items():
                    assert_identical(results[backend][agent_id][name], value, f"{backend} {agent_id} {name}")
        for backend in MONGO_BACKENDS:
            assert canonical(normalise(results[backend])) == canonical(normalise(results[FILE]))


@pytest.fixture
def harness(
    restore_server: RestoreServer,
    mongo_client: MongoClient[dict[str, Any]],
    mongodb_uri: str,
    database_name: str,
    tmp_path: Path,
) -> Harness:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    return Harness(restore_server, mongo_client, mongodb_uri, database_name, tmp_path / "file-sessions", work_dir)


def all_texts(messages: list[Message]) -> list[str]:
    return [block["text"] for message in messages for block in message["content"] if "text" in block]


# ------------------------------------------------------------------------------------------ tools


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up.

    Args:
        order_id: The order id.
    """
    return {"status": "success", "content": [{"json": {"order_id": order_id, "total": 42.5, "items": ["mug", "tea"]}}]}


@tool
def convert_currency(amount: float, to: str) -> str:
    """Convert an amount of euros.

    Args:
        amount: Euros.
        to: Target currency code.
    """
    if to not in {"USD", "GBP"}:
        raise ValueError(f"unsupported currency {to}")
    return f"{amount * 1.1:.2f} {to}"


@tool(context=True)
def refund(order_id: str, amount: float, tool_context: ToolContext) -> str:
    """Refund an order; needs a human's approval.

    Args:
        order_id: The order id.
        amount: Amount to refund.
    """
    approval = tool_context.interrupt("approval", reason={"order_id": order_id, "amount": amount})
    return f"refund {approval}"


@tool(context=True)
def remember(key: str, value: str, tool_context: ToolContext) -> str:
    """Remember a value in the agent's state.

    Args:
        key: Name of the value.
        value: The value.
    """
    notes = tool_context.agent.state.get("notes") or {}
    notes[key] = value
    tool_context.agent.state.set("notes", notes)
    tool_context.agent.state.set("last_tool", {"name": "remember", "calls": len(notes)})
    return f"remembered {key}"


# ------------------------------------------------------------------------------------------ 1-4, 9, 10


def test_multi_turn_text(harness: Harness) -> None:
    def script(conversation: Conversation) -> None:
        agent = conversation.agent(
            "assistant",
            [text("Hello! How can I help?"), text("Paris is the capital of France."), text("Über 2 Mio. — «ça va» 👍")],
        )
        agent("Hi there")
        agent("What is the capital of France?")
        agent("Und wie viele Einwohner? ✈️")

    live = harness.run(script)
    assert len(live[FILE]["assistant"]["messages"]) == 6
    harness.assert_restores_match(live, harness.restore())


def test_tool_use_tool_errors_and_pending_interrupt(harness: Harness) -> None:
    def script(conversation: Conversation) -> None:
        agent = conversation.agent(
            "assistant",
            [
                tool_call("lookup_order", {"order_id": "A-1"}, tool_use_id="t1", text="Let me look."),
                text("Order A-1 totals 42.50 EUR."),
                response(
                    tool_call("convert_currency", {"amount": 42.5, "to": "USD"}, tool_use_id="t2"),
                    tool_call("convert_currency", {"amount": 42.5, "to": "JPY"}, tool_use_id="t3"),
                ),
                text("46.75 USD; I cannot convert to JPY."),
                tool_call("refund", {"order_id": "A-1", "amount": 42.5}, tool_use_id="t4"),
            ],
            tools=(lookup_order, convert_currency, refund),
        )
        agent("What does order A-1 cost?")
        agent("In dollars and yen?")
        result = agent("Refund it")
        assert result.stop_reason == "interrupt"

    live = harness.run(script)
    messages = live[FILE]["assistant"]["messages"]
    assert any(
        "toolResult" in block and block["toolResult"]["status"] == "error" for m in messages for block in m["content"]
    )
    assert live[FILE]["assistant"]["interrupt_state"]["activated"] is True
    harness.assert_restores_match(live, harness.restore())


def test_agent_state_from_tools_and_between_turns(harness: Harness) -> None:
    profile = {
        "name": "Zoë Ångström",
        "city": "東京",
        "tags": ["vip", "🚀", None, True, 3, 2.5],
        "nested": {"level": {"deeper": [{"a": 1}, {"b": [1.0, 2, "3"]}]}},
        "prices": {"$usd": 9.5, "v1.2": False, "": "empty key"},
    }

    def script(conversation: Conversation) -> None:
        agent = conversation.agent(
            "assistant",
            [
                tool_call("remember", {"key": "colour", "value": "grün"}, tool_use_id="s1"),
                text("Noted."),
                tool_call("remember", {"key": "ciudad", "value": "Málaga"}, tool_use_id="s2"),
                text("Noted again."),
                text("Bye."),
            ],
            tools=(remember,),
        )
        agent.state.set("profile", profile)
        agent("Remember that my favourite colour is grün")
        agent.state.set("counter", 1)
        agent.state.set("ratio", 0.25)
        agent("And that I live in Málaga")
        agent.state.set("counter", 2)
        agent.state.delete("ratio")
        agent("Bye")
        # A change after the last turn is persisted by the next sync; here an explicit one.
        agent.state.set("closed", {"by": "user", "reason": "fertig ✅"})
        conversation.session_manager.sync_agent(agent)

    live = harness.run(script)
    state = live[FILE]["assistant"]["state"]
    assert state["notes"] == {"colour": "grün", "ciudad": "Málaga"}
    assert state["profile"] == profile
    assert state["counter"] == 2
    assert "ratio" not in state
    harness.assert_restores_match(live, harness.restore())


def test_two_agents_in_one_session_restore_their_own_history(harness: Harness) -> None:
    def script(conversation: Conversation) -> None:
        planner = conversation.agent("planner", [text("plan-1"), text("plan-2"), text("plan-3")])
        critic = conversation.agent("critic", [text("critique-1"), text("critique-2")])
        planner("plan a trip")
        critic("criticise plan-1")
        planner.state.set("owner", "planner")
        planner("revise it")
        critic.state.set("owner", "critic")
        critic("criticise plan-2")
        planner("final version")

    live = harness.run(script)
    restored = harness.restore()
    harness.assert_restores_match(live, restored)
    for backend in MONGO_BACKENDS:
        planner_texts = all_texts(restored["results"][backend]["planner"]["messages"])
        critic_texts = all_texts(restored["results"][backend]["critic"]["messages"])
        assert planner_texts == ["plan a trip", "plan-1", "revise it", "plan-2", "final version", "plan-3"]
        assert critic_texts == ["criticise plan-1", "critique-1", "criticise plan-2", "critique-2"]


def test_two_hundred_turns(harness: Harness) -> None:
    turns = 200

    def script(conversation: Conversation) -> None:
        agent = conversation.agent(
            "assistant", [text(f"answer {i}") for i in range(turns)], conversation_manager={"type": "null"}
        )
        for i in range(turns):
            agent(f"question {i}")

    live = harness.run(script)
    assert len(live[FILE]["assistant"]["messages"]) == 2 * turns
    harness.assert_restores_match(live, harness.restore())


def test_agent_ids_with_dots_and_dollars(harness: Harness) -> None:
    harness.session_id = "tenant.eu$42"

    def script(conversation: Conversation) -> None:
        support = conversation.agent("support.v2", [text("support here"), text("still support")])
        billing = conversation.agent("$billing", [text("billing here")])
        support("hello support")
        billing.state.set("plan", {"name": "pro", "seats": 3})
        billing("hello billing")
        support("again")

    live = harness.run(script)
    harness.assert_restores_match(live, harness.restore())
    for backend in MONGO_BACKENDS:
        agents = harness.stored_session(backend)["agents"]
        assert set(agents) == {encode_field_name("support.v2"), encode_field_name("$billing")}
        assert agents[encode_field_name("$billing")]["agent_id"] == "$billing"


# ------------------------------------------------------------------------------------------ 5. sliding window


def test_sliding_window_restore_transfers_only_the_window(harness: Harness) -> None:
    window = {"type": "sliding", "window_size": 4}
    turns = 10

    def script(conversation: Conversation) -> None:
        agent = conversation.agent(
            "assistant", [text(f"answer {i}: " + "x" * 400) for i in range(turns)], conversation_manager=window
        )
        for i in range(turns):
            agent(f"question {i}: " + "y" * 400)

    live = harness.run(script)
    expected = live[FILE]["assistant"]
    assert len(expected["messages"]) == 4
    assert expected["conversation_manager_state"]["removed_message_count"] == 2 * turns - 4

    restored = harness.restore()
    harness.assert_restores_match(live, restored)

    key = encode_field_name("assistant")
    for backend in MONGO_BACKENDS:
        # The restore's list_messages is the one read whose reply carries messages.
        reads = restored["reads"][backend]
        slices = [read for read in reads if read["messages_per_agent"]]
        assert len(slices) == 1, reads
        assert slices[0]["messages_per_agent"] == {key: 4}

        stored = harness.stored_session(backend)["agents"][key]
        # The 16 trimmed messages moved out of the session document together (one batch).
        assert len(stored["messages"]) + stored.get("overflow_count", 0) == 2 * turns
        assert len(stored["messages"]) <= 4 + MOVE_BATCH
        window_bytes = sum(len(bson.encode({"m": entry})) for entry in stored["messages"][-4:])
        # The reply carries the 4 windowed messages plus the session and agent state and a small
        # envelope, not the 20 stored ones (each ~0.5 KB).
        assert slices[0]["reply_bytes"] < window_bytes + 2048
        others = [read for read in reads if read is not slices[0]]
        assert all(not read["messages_per_agent"] for read in others)


# ------------------------------------------------------------------------------------------ 6. bytes


def test_image_bytes_round_trip_and_are_stored_as_bson_binary(harness: Harness) -> None:
    image = random.Random(6).randbytes(50 * 1024)

    def script(conversation: Conversation) -> None:
        agent = conversation.agent("assistant", [text("A very random picture."), text("You are welcome.")])
        prompt: list[ContentBlock] = [
            {"text": "What is in this picture?"},
            {"image": {"format": "png", "source": {"bytes": image}}},
        ]
        agent(prompt)
        agent("Thanks")

    live = harness.run(script)
    restored = harness.restore()
    harness.assert_restores_match(live, restored)
    for backend in MONGO_BACKENDS:
        restored_block = restored["results"][backend]["assistant"]["messages"][0]["content"][1]
        assert restored_block["image"]["source"]["bytes"] == image

        entry = harness.stored_session(backend)["agents"]["assistant"]["messages"][0]
        stored_bytes = entry["message"]["content"][1]["image"]["source"]["bytes"]
        assert type(stored_bytes) is bytes  # BSON binary; base64 text would come back as str
        assert stored_bytes == image


# ------------------------------------------------------------------------------------------ 7. redaction


class GuardrailModel(ScriptedModel):
    """A scripted model whose second answer trips a guardrail, as Bedrock reports it."""

    async def stream(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        trip = len(self.calls) == 1
        async for event in super().stream(messages, *args, **kwargs):
            if trip and "messageStop" in event:
                yield {
                    "redactContent": {
                        "redactUserContentMessage": "[User input redacted.]",
                        "redactAssistantContentMessage": "[Assistant output redacted.]",
                    }
                }
            yield event


@pytest.mark.parametrize("flow", ["guardrail", "session_manager"])
def test_redacted_message_is_restored_redacted(harness: Harness, flow: str) -> None:
    secret = "my card is 4111 1111 1111 1111"

    def script(conversation: Conversation) -> None:
        responses = [text("Hi!"), text(f"Got it: {secret}"), text("Anything else?")]
        agent = conversation.agent("assistant", GuardrailModel(responses) if flow == "guardrail" else responses)
        agent("hello")
        agent(secret)
        if flow == "session_manager":
            # Keep the message's tracking id: a message without one is given a new id in memory at the
            # next turn, which no session manager persists (Strands behaviour, FileSessionManager too).
            redacted: Message = {
                "role": "assistant",
                "content": [{"text": "[redacted by policy]"}],
                "tracking_id": agent.messages[-1]["tracking_id"],
            }
            conversation.session_manager.redact_latest_message(redacted, agent)
            agent.messages[-1] = redacted
        agent("bye")

    live = harness.run(script)
    restored = harness.restore()
    harness.assert_restores_match(live, restored)
    for backend in BACKENDS:
        texts = all_texts(restored["results"][backend]["assistant"]["messages"])
        if flow == "guardrail":
            assert texts == [
                "hello",
                "Hi!",
                "[User input redacted.]",
                "[Assistant output redacted.]",
                "bye",
                "Anything else?",
            ]
        else:
            assert texts == ["hello", "Hi!", secret, "[redacted by policy]", "bye", "Anything else?"]

    if flow == "session_manager":
        # The original stays stored beside its redaction, as FileSessionManager keeps it.
        file_entry = json.loads(
            (
                harness.storage_dir
                / f"session_{harness.session_id}"
                / "agents"
                / "agent_assistant"
                / "messages"
                / "message_3.json"
            ).read_text(encoding="utf-8")
        )
        for backend in MONGO_BACKENDS:
            entry = harness.stored_session(backend)["agents"]["assistant"]["messages"][3]
            assert entry["message"]["content"] == file_entry["message"]["content"] == [{"text": f"Got it: {secret}"}]
            assert normalise(entry["redact_message"]) == normalise(file_entry["redact_message"])


# ------------------------------------------------------------------------------------------ 8. Graph and Swarm


class Crash(BaseException):
    """Stands for the process dying mid-run: nothing in Strands catches it, so no final sync happens."""


@pytest.mark.parametrize("kind", ["graph", "swarm"])
def test_graph_and_swarm_state_persist_and_resume_in_a_new_process(harness: Harness, kind: str) -> None:
    if kind == "graph":
        # "write" fails: the graph is stored FAILED with "write" as the node to run next.
        task = "Write about tides"
        multi_agent_id = GRAPH_ID
        resume_scripts = {"research": [], "write": ["Tides, an article."]}

        def run_live(manager: RepositorySessionManager) -> None:
            models = {
                "research": ScriptedModel([text("Tides follow the moon.")]),
                "write": ScriptedModel([RuntimeError("model down")]),
            }
            graph = build_graph(models, manager)
            with pytest.raises(RuntimeError, match="model down"):
                graph(task)

    else:
        # triage hands off to billing, then the process "dies" inside billing: the last checkpoint
        # says EXECUTING with billing to run next.
        task = "I want a refund for order A-1"
        multi_agent_id = SWARM_ID
        resume_scripts = {"triage": [], "billing": ["Refund issued."]}

        def run_live(manager: RepositorySessionManager) -> None:
            handoff = {"agent_name": "billing", "message": "refund A-1", "context": {"order": "A-1", "ü": [1, 2.5]}}
            models = {
                "triage": ScriptedModel(
                    [tool_call("handoff_to_agent", handoff, tool_use_id="h1"), text("Handed over.")]
                ),
                "billing": ScriptedModel([Crash("power cut")]),
            }
            swarm = build_swarm(models, manager)
            with pytest.raises(Crash):
                swarm(task)

    stored: dict[str, Any] = {}
    for backend in BACKENDS:
        manager = harness.open(backend)
        run_live(manager)
        stored[backend] = manager.session_repository.read_multi_agent(harness.session_id, multi_agent_id)
        if isinstance(manager, MongoDBSessionManager):
            manager.close()

    assert stored[FILE]["status"] == ("failed" if kind == "graph" else "executing")
    assert stored[FILE]["next_nodes_to_execute"] == (["write"] if kind == "graph" else ["billing"])
    for backend in MONGO_BACKENDS:
        assert canonical(normalise(stored[backend])) == canonical(normalise(stored[FILE]))

    restored = harness.restore(kind=kind, scripts=resume_scripts, task=task)["results"]
    expected_calls = {"research": 0, "write": 1} if kind == "graph" else {"triage": 0, "billing": 1}
    for backend in BACKENDS:
        outcome = restored[backend]
        assert outcome["resume_from_session"] is True
        assert outcome["resume_nodes"] == (["write"] if kind == "graph" else ["billing"])
        # Only the node that had not finished runs again.
        assert outcome["model_calls"] == expected_calls
        assert outcome["reopened"] == {"resume_from_session": False, "status": "pending"}
    for backend in MONGO_BACKENDS:
        assert canonical(normalise(restored[backend])) == canonical(normalise(restored[FILE]))
