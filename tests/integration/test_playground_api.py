"""The chat playground's HTTP API (``playground/chat/backend_fastapi_streaming.py``) over real HTTP.

Each test runs the app with uvicorn on a free port against the test server and a fresh database,
talks to it with httpx, and checks both the answers and what MongoDB holds afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from strands import tool
from strands.types.session import SessionMessage
from strands.types.tools import ToolContext
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager
from mongodb_session_manager.mongodb_session_repository import DEFAULT_COLLECTION_NAME, MongoDBSessionRepository
from playground.chat._servers import serve_app
from playground.chat.backend_fastapi_streaming import (
    AGENT_ID,
    FAILED,
    INTERRUPTED,
    NOT_RUN,
    PLAYGROUND_SESSIONS,
    create_app,
    display_items,
    turn_ending,
    user_facts_tool,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from _local import OfflineDemoModel

FRONTEND = "http://localhost:8881"


@contextlib.contextmanager
def running_api(
    mongodb_uri: str, database_name: str, model_factory: Any = None, **options: Any
) -> Iterator[httpx.Client]:
    if model_factory is None:
        model = OfflineDemoModel(stream_delay=0.005)  # one instance, as the real backend has

        def model_factory() -> OfflineDemoModel:
            return model

    with (
        serve_app(create_app(mongodb_uri, database_name, model_factory, **options)) as url,
        httpx.Client(base_url=url, timeout=20) as client,
    ):
        yield client


@pytest.fixture
def api(mongodb_uri: str, database_name: str) -> Iterator[httpx.Client]:
    with running_api(mongodb_uri, database_name) as client:
        yield client


@pytest.fixture
def sessions(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Collection[dict[str, Any]]:
    return mongo_client[database_name][DEFAULT_COLLECTION_NAME]


def new_session(api: httpx.Client) -> str:
    response = api.post("/sessions")
    assert response.status_code == 201
    session_id: str = response.json()["session_id"]
    return session_id


def parse_events(body: str) -> list[tuple[str, Any]]:
    """``[(event, data), ...]`` from a text/event-stream body."""
    events = []
    for block in body.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def chat(api: httpx.Client, session_id: str, prompt: str) -> list[tuple[str, Any]]:
    response = api.post(f"/chat/{session_id}/stream", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    return parse_events(response.text)


def test_a_new_session_is_stored_empty(api: httpx.Client, sessions: Collection[dict[str, Any]]) -> None:
    session_id = new_session(api)

    view = api.get(f"/sessions/{session_id}").json()

    assert view["session_id"] == session_id
    assert view["created_at"]
    assert view["messages"] == view["turns"] == view["feedbacks"] == []
    assert view["totals"] == {
        "messages": 0,
        "turns": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "latency_ms": 0,
    }
    assert view["title"] is None
    assert view["metadata"] == {}  # no facts about the user yet; the bookkeeping is not one
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    assert stored["metadata"] == PLAYGROUND_SESSIONS


def test_a_reply_streams_as_server_sent_events_and_is_stored_with_its_metrics(
    api: httpx.Client, sessions: Collection[dict[str, Any]]
) -> None:
    session_id = new_session(api)

    with api.stream("POST", f"/chat/{session_id}/stream", json={"prompt": "Hello, I am Ada."}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        chunks = [chunk.decode() for chunk in response.iter_raw()]
    events = parse_events("".join(chunks))

    assert len(chunks) > 1  # written piece by piece, not as one body
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"} and len(names) > 3
    streamed = "".join(data["text"] for name, data in events if name == "token")
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    messages = stored["agents"][AGENT_ID]["messages"]
    assert [m["message"]["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["message"]["content"] == [{"text": "Hello, I am Ada."}]
    assert messages[1]["message"]["content"] == [{"text": streamed}]
    assert stored["metadata"]["_title"] == "Hello, I am Ada."

    metrics = messages[1]["event_loop_metrics"]
    done = events[-1][1]
    assert done == {
        "message_id": 1,
        "input_tokens": metrics["usage"]["inputTokens"],
        "output_tokens": metrics["usage"]["outputTokens"],
        "total_tokens": metrics["usage"]["totalTokens"],
        "latency_ms": metrics["latency_ms"],
        "duration_ms": metrics["duration_ms"],
        "cycles": 1,
        "tools": {},
    }
    assert done["total_tokens"] > 0 and done["latency_ms"] > 0


def test_the_history_lists_both_turns_with_tool_calls_metrics_and_totals(api: httpx.Client) -> None:
    session_id = new_session(api)
    chat(api, session_id, "Hi!")
    events = chat(api, session_id, "What is (17 + 25) * 2?")
    assert [data for name, data in events if name == "tool"] == [
        {"role": "tool", "kind": "call", "tool": "calculator", "text": 'calculator(expression="(17 + 25) * 2")'},
        {
            "role": "tool",
            "kind": "result",
            "tool": "calculator",
            "status": "success",
            "text": "→ 84",  # the calculator says "Result: 84"
            "view": {"type": "value", "label": None, "value": "84"},
        },
    ]

    view = api.get(f"/sessions/{session_id}").json()

    assert [(m["role"], m["message_id"]) for m in view["messages"]] == [
        ("user", 0),
        ("assistant", 1),
        ("user", 2),
        ("tool", 3),
        ("tool", 4),
        ("assistant", 5),
    ]
    assert view["messages"][2]["text"] == "What is (17 + 25) * 2?"
    assert view["messages"][5]["text"] == "(offline demo model) The calculator says: 84."
    turns = view["turns"]
    assert [turn["message_id"] for turn in turns] == [1, 5]
    assert [view["messages"][i]["turn"] for i in (1, 5)] == turns
    assert turns[0]["tools"] == {} and turns[1]["tools"] == {"calculator": 1}
    assert turns[1]["cycles"] == 2
    assert view["totals"] == {
        "messages": 6,
        "turns": 2,
        "input_tokens": sum(t["input_tokens"] for t in turns),
        "output_tokens": sum(t["output_tokens"] for t in turns),
        "total_tokens": sum(t["total_tokens"] for t in turns),
        "latency_ms": sum(t["latency_ms"] for t in turns),
    }
    assert view["messages"][4]["text"] == "→ 84"
    assert view["title"] == "Hi!"
    assert view["metadata"] == {}


def test_the_agent_keeps_notes_in_the_session_metadata(api: httpx.Client) -> None:
    session_id = new_session(api)

    events = chat(api, session_id, "My name is Ada.")

    tools = [data["text"] for name, data in events if name == "tool"]
    assert tools == ['manage_metadata(action="set", metadata={"name": "Ada"})', "→ updated: name"]
    view = api.get(f"/sessions/{session_id}").json()
    assert view["metadata"] == {"name": "Ada"}
    assert view["title"] == "My name is Ada."
    assert view["turns"][0]["tools"] == {"manage_metadata": 1}


# ------------------------------------------------------------------ tool results, shown readably


def result_of(tool_name: str, text: str, status: str = "success") -> dict[str, Any]:
    """What the page is sent for a ``text`` result of ``tool_name`` (its tool use comes first)."""
    use = {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": tool_name, "input": {}}}]}
    result = {"toolResult": {"toolUseId": "t1", "status": status, "content": [{"text": text}]}}
    names: dict[str, str] = {}
    display_items(use, names)
    (item,) = display_items({"role": "user", "content": [result]}, names)
    return item


RECORDS = [{"city": "Lisbon", "nights": 3}, {"city": "Porto", "nights": 2, "booked": True}]


@pytest.mark.parametrize(
    ("tool_name", "text", "view", "line"),
    [
        ("calculator", "Result: 84", {"type": "value", "label": None, "value": "84"}, "84"),
        (
            "calculator",
            "Result: 0.333333333333333",
            {"type": "value", "label": None, "value": "0.333333333333333"},
            "0.333333333333333",
        ),
        ("calculator", "Result: [-2, 2]", {"type": "value", "label": None, "value": "-2, 2"}, "-2, 2"),
        (
            "manage_metadata",
            '{"metadata": {"name": "Ada", "city": "Lisbon", "guests": 14}}',
            {
                "type": "table",
                "label": "metadata",
                "columns": ["field", "value"],
                "rows": [["name", "Ada"], ["city", "Lisbon"], ["guests", "14"]],
            },
            "metadata: name: Ada, city: Lisbon, guests: 14",
        ),
        (
            "manage_metadata",
            '{"metadata": {}}',
            {"type": "value", "label": "metadata", "value": "(empty)"},
            "metadata: (empty)",
        ),
        (
            "manage_metadata",
            '{"updated": ["city", "name"]}',
            {"type": "value", "label": "updated", "value": "city, name"},
            "updated: city, name",
        ),
        (
            "manage_metadata",
            '{"deleted": ["city"]}',
            {"type": "value", "label": "deleted", "value": "city"},
            "deleted: city",
        ),
        ("search", "Nothing found.", {"type": "value", "label": None, "value": "Nothing found."}, "Nothing found."),
        (
            "search",
            json.dumps(RECORDS),
            {
                "type": "table",
                "label": None,
                "columns": ["city", "nights", "booked"],
                "rows": [["Lisbon", "3", ""], ["Porto", "2", "true"]],
            },
            "city=Lisbon, nights=3, booked=; city=Porto, nights=2, booked=true",
        ),
    ],
    ids=["number", "decimal", "list", "facts", "no-facts", "updated", "deleted", "text", "records"],
)
def test_a_plain_value_shows_as_a_value_and_a_few_records_as_a_table(
    tool_name: str, text: str, view: dict[str, Any], line: str
) -> None:
    item = result_of(tool_name, text)

    assert item == {
        "role": "tool",
        "kind": "result",
        "tool": tool_name,
        "status": "success",
        "text": f"→ {line}",
        "view": view,
    }


@pytest.mark.parametrize(
    ("value", "summary"),
    [
        ({"metadata": {"name": "Ada", "trip": {"city": "Lisbon", "nights": 3}}}, "object with 2 fields"),
        ([{"city": "Lisbon", "stops": ["Sintra", "Belém"]}], "list of 1 item"),
        ([{"n": i} for i in range(21)], "list of 21 items"),
        ([{f"c{i}": i for i in range(9)}], "list of 1 item"),
        ([1, {"a": 1}], "list of 2 items"),
    ],
    ids=["nested-value", "nested-record", "many-rows", "many-columns", "mixed"],
)
def test_anything_else_is_collapsed_pretty_json(value: Any, summary: str) -> None:
    item = result_of("search", json.dumps(value))

    view = item["view"]
    assert view["type"] == "details"
    assert view["summary"] == summary
    inner = value["metadata"] if isinstance(value, dict) else value
    assert view["label"] == ("metadata" if isinstance(value, dict) else None)
    assert view["text"] == json.dumps(inner, indent=2, ensure_ascii=False)  # pretty, and all of it
    assert item["text"] == f"→ {view['label'] + ': ' if view['label'] else ''}{summary}"


def test_a_long_text_result_is_collapsed_and_an_error_keeps_its_status() -> None:
    long = result_of("search", "\n".join(f"line {i}" for i in range(10)))
    failed = result_of("calculator", "Error: invalid syntax", status="error")

    assert long["view"] == {
        "type": "details",
        "label": None,
        "summary": "line 0",
        "text": "\n".join(f"line {i}" for i in range(10)),
    }
    assert failed["status"] == "error"
    assert failed["view"] == {"type": "value", "label": None, "value": "Error: invalid syntax"}


def test_a_json_content_block_is_shown_like_json_text() -> None:
    use = {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "search", "input": {}}}]}
    result = {"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"json": RECORDS}]}}

    items = display_items(use) + display_items({"role": "user", "content": [result]})

    assert items[1]["view"]["type"] == "table"
    assert items[1]["tool"] == "tool"  # its use was in another call: the name is not known


# ------------------------------------------------------------------ user facts vs bookkeeping


def test_the_agent_reads_back_only_what_the_user_told_it(
    api: httpx.Client, sessions: Collection[dict[str, Any]]
) -> None:
    session_id = new_session(api)
    chat(api, session_id, "Hi!")  # becomes the title
    chat(api, session_id, "My name is Ada and my city is Lisbon.")

    events = chat(api, session_id, "What do you know about me?")

    answer = "".join(data["text"] for name, data in events if name == "token")
    assert answer == "(offline demo model) From this session's metadata I know: city = 'Lisbon', name = 'Ada'."
    result = [data for name, data in events if name == "tool" and data["kind"] == "result"]
    assert [r["view"] for r in result] == [
        {
            "type": "table",
            "label": "metadata",
            "columns": ["field", "value"],
            "rows": [["name", "Ada"], ["city", "Lisbon"]],
        }
    ]
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    assert stored["metadata"] == {**PLAYGROUND_SESSIONS, "_title": "Hi!", "name": "Ada", "city": "Lisbon"}
    view = api.get(f"/sessions/{session_id}").json()
    assert (view["title"], view["metadata"]) == ("Hi!", {"name": "Ada", "city": "Lisbon"})


def test_the_agents_tool_cannot_change_the_bookkeeping(
    api: httpx.Client,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    sessions: Collection[dict[str, Any]],
) -> None:
    session_id = new_session(api)
    chat(api, session_id, "Hi!")
    with MongoDBSessionManager(session_id, client=mongo_client, database_name=database_name) as manager:
        facts = user_facts_tool(manager)

        refusals = [
            facts(action="set", metadata={"_title": "pwned", "name": "Eve"}),
            facts(action="set", metadata='{"_client": "elsewhere"}'),
            facts(action="delete", keys=["_client"]),
            facts(action="delete", keys="_title"),
            facts(action="delete", keys='["_title"]'),
        ]
        allowed = facts(action="set", metadata={"name": "Ada"})
        read = facts(action="get")

    for refusal in refusals:
        assert refusal["status"] == "error"
        assert "reserved" in json.loads(refusal["content"][0]["text"])["error"]
    assert allowed["status"] == "success"
    assert json.loads(read["content"][0]["text"]) == {"metadata": {"name": "Ada"}}
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    assert stored["metadata"] == {**PLAYGROUND_SESSIONS, "_title": "Hi!", "name": "Ada"}


def test_playground_sessions_are_listed_with_their_titles(
    api: httpx.Client, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    first, second = new_session(api), new_session(api)
    chat(api, first, "Plan a party")
    chat(api, first, "My name is Ada.")
    MongoDBSessionManager("elsewhere", client=mongo_client, database_name=database_name)  # not the playground's
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repository:
        listed = repository.list_sessions(metadata_filter=PLAYGROUND_SESSIONS)

    assert sorted(entry["session_id"] for entry in listed) == sorted([first, second])
    titles = {entry["session_id"]: entry["metadata"].get("_title") for entry in listed}
    assert titles == {first: "Plan a party", second: None}


def test_feedback_is_stored_through_the_session_manager(
    api: httpx.Client, sessions: Collection[dict[str, Any]]
) -> None:
    session_id = new_session(api)
    chat(api, session_id, "Hi!")

    response = api.post(f"/sessions/{session_id}/feedback", json={"rating": "down", "comment": "Too short."})

    assert response.status_code == 201
    entry = response.json()
    assert (entry["rating"], entry["comment"]) == ("down", "Too short.")
    assert api.get(f"/sessions/{session_id}").json()["feedbacks"] == [entry]
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    assert [(f["rating"], f["comment"]) for f in stored["feedbacks"]] == [("down", "Too short.")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/sessions/no-such-session", None),
        ("POST", "/sessions/no-such-session/feedback", {"rating": "up"}),
        ("POST", "/chat/no-such-session/stream", {"prompt": "Hello"}),
    ],
)
def test_an_unknown_session_is_404_and_is_not_created(
    api: httpx.Client, sessions: Collection[dict[str, Any]], method: str, path: str, body: Any
) -> None:
    response = api.request(method, path, json=body)

    assert response.status_code == 404
    assert "unknown session" in response.json()["detail"]
    assert sessions.count_documents({}) == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"prompt": ""}, 422),
        ({"prompt": "  \n\t "}, 422),
        ({}, 422),
        ({"prompt": 42}, 422),
        ({"prompt": "x" * 8_001}, 413),
    ],
    ids=["empty", "blank", "missing", "not-a-string", "oversized"],
)
def test_a_bad_prompt_is_refused_and_nothing_is_stored(
    api: httpx.Client, sessions: Collection[dict[str, Any]], body: Any, status: int
) -> None:
    session_id = new_session(api)

    response = api.post(f"/chat/{session_id}/stream", json=body)

    assert response.status_code == status
    assert response.json()["detail"]
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    assert not stored.get("agents")


def test_a_prompt_at_the_limit_is_accepted(api: httpx.Client) -> None:
    session_id = new_session(api)

    events = chat(api, session_id, "x" * 8_000)

    assert events[-1][0] == "done"


@pytest.mark.parametrize(
    "body",
    [{"rating": "meh"}, {"rating": "up", "comment": 5}, {"rating": "up", "comment": "x" * 20_001}],
    ids=["rating", "comment-type", "comment-length"],
)
def test_bad_feedback_is_422_and_nothing_is_stored(
    api: httpx.Client, sessions: Collection[dict[str, Any]], body: Any
) -> None:
    session_id = new_session(api)

    response = api.post(f"/sessions/{session_id}/feedback", json=body)

    assert response.status_code == 422
    stored = sessions.find_one({"_id": session_id})
    assert stored is not None
    assert not stored.get("feedbacks")


def test_a_session_id_the_library_refuses_is_422(api: httpx.Client) -> None:
    response = api.get("/sessions/bad%00id")

    assert response.status_code == 422
    assert "session_id" in response.json()["detail"]


def test_cors_allows_the_frontend_origins_only(api: httpx.Client) -> None:
    session_id = new_session(api)
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}

    for origin in (FRONTEND, "http://127.0.0.1:8881"):
        allowed = api.options(f"/chat/{session_id}/stream", headers={"Origin": origin, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "POST" in allowed.headers["access-control-allow-methods"]
    refused = api.options(f"/chat/{session_id}/stream", headers={"Origin": "http://evil.example", **preflight})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    streamed = api.post(f"/chat/{session_id}/stream", json={"prompt": "Hi"}, headers={"Origin": FRONTEND})
    assert streamed.headers["access-control-allow-origin"] == FRONTEND
    viewed = api.get(f"/sessions/{session_id}", headers={"Origin": "http://evil.example"})
    assert viewed.status_code == 200
    assert "access-control-allow-origin" not in viewed.headers


def test_allowed_origins_and_prompt_limit_are_configurable(mongodb_uri: str, database_name: str) -> None:
    origin = "http://localhost:5555"
    with running_api(mongodb_uri, database_name, allowed_origins=[origin], max_prompt_chars=10) as api:
        session_id = new_session(api)
        assert api.post(f"/chat/{session_id}/stream", json={"prompt": "x" * 11}).status_code == 413
        response = api.post(f"/chat/{session_id}/stream", json={"prompt": "x" * 10}, headers={"Origin": origin})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        default = api.get(f"/sessions/{session_id}", headers={"Origin": FRONTEND})
        assert "access-control-allow-origin" not in default.headers


class GatedModel(OfflineDemoModel):
    """The offline demo model; its reply to "first" stops after one word until ``gate`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    async def stream(self, messages: list[Any], *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        gated = messages[-1]["content"] == [{"text": "first"}]
        words = 0
        async for event in super().stream(messages, *args, **kwargs):
            if "contentBlockDelta" in event:
                words += 1
                while gated and words > 1 and not self.gate.is_set():
                    await asyncio.sleep(0.01)
            yield event


def test_a_second_prompt_while_a_reply_streams_is_409(mongodb_uri: str, database_name: str) -> None:
    gate = threading.Event()
    with running_api(mongodb_uri, database_name, lambda: GatedModel(gate)) as api:
        session_id = new_session(api)
        with api.stream("POST", f"/chat/{session_id}/stream", json={"prompt": "first"}) as first:
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: token"

            second = api.post(f"/chat/{session_id}/stream", json={"prompt": "second"})
            assert second.status_code == 409
            other = new_session(api)  # other sessions are not held up
            assert [name for name, _ in chat(api, other, "elsewhere")][-1] == "done"
            gate.set()
            rest = "\n".join(lines)
        assert "event: done" in rest
        assert [name for name, _ in chat(api, session_id, "second")][-1] == "done"
        view = api.get(f"/sessions/{session_id}").json()
        assert [m["text"] for m in view["messages"] if m["role"] == "user"] == ["first", "second"]


class BrokenModel(OfflineDemoModel):
    async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise RuntimeError("the model is unavailable")
        yield  # pragma: no cover


def test_a_failing_turn_ends_the_stream_with_an_error_event(
    mongodb_uri: str, database_name: str, repository: MongoDBSessionRepository
) -> None:
    with running_api(mongodb_uri, database_name, BrokenModel) as api:
        session_id = new_session(api)

        events = chat(api, session_id, "Hello")

    assert events[-1][0] == "error"
    assert "the model is unavailable" in events[-1][1]["detail"]
    assert "done" not in [name for name, _ in events]
    # Strands keeps the unanswered prompt; the backend ends the turn so the next one can be sent.
    stored = stored_messages(repository, session_id)
    assert stored == [user("Hello"), assistant(FAILED)]
    assert converse_violations([*stored, user("next")]) == []


# ------------------------------------------------------------------ turns cut off mid-way


def converse_violations(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """What Bedrock's Converse API refuses in a conversation it is sent (``[]``: nothing).

    Its rules: at least one message, the first from the user; roles alternate user/assistant;
    every message has content and no text block is blank; tool uses are the assistant's and tool
    results the user's; the tool uses of an assistant message are answered, each exactly once, by
    the tool results of the next message (a user message), and a user message holds no result
    of a tool use that the assistant message just before it did not make.
    """
    if not messages:
        return ["no messages"]
    problems = []
    if messages[0].get("role") != "user":
        problems.append("message 0: the first message is not a user message")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content") or []
        if role not in ("user", "assistant"):
            problems.append(f"message {i}: role {role!r}")
        if i and role == messages[i - 1].get("role"):
            problems.append(f"message {i}: a second {role} message in a row")
        if not content:
            problems.append(f"message {i}: no content")
        for block in content:
            if "text" in block and not str(block["text"]).strip():
                problems.append(f"message {i}: a blank text block")
            if "toolUse" in block and role != "assistant":
                problems.append(f"message {i}: a toolUse in a {role} message")
            if "toolResult" in block and role != "user":
                problems.append(f"message {i}: a toolResult in a {role} message")
        results = sorted(block["toolResult"]["toolUseId"] for block in content if "toolResult" in block)
        previous = messages[i - 1].get("content") or [] if i else []
        uses = sorted(block["toolUse"]["toolUseId"] for block in previous if "toolUse" in block)
        if results != uses:
            problems.append(f"message {i}: tool results {results} answer the tool uses {uses} before them")
    last = messages[-1].get("content") or []
    if any("toolUse" in block for block in last):
        problems.append(f"message {len(messages) - 1}: its tool uses are never answered")
    return problems


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"text": text}]}


def uses(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": i, "name": "calculator", "input": {}}} for i in ids],
    }


def results(*ids: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": i, "status": "success", "content": [{"text": "4"}]}} for i in ids],
    }


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([user("hi")], None),
        ([user("hi"), assistant("hello"), user("2+2?"), uses("a", "b"), results("b", "a"), assistant("4")], None),
        ([], "no messages"),
        ([assistant("hello"), user("hi")], "first message"),
        ([user("hi"), user("anyone?")], "a second user message in a row"),
        ([user("hi"), assistant("hello"), assistant("again")], "a second assistant message in a row"),
        ([user("hi"), uses("a")], "never answered"),
        ([user("hi"), uses("a"), user("and?")], "tool results [] answer the tool uses ['a']"),
        ([user("hi"), uses("a", "b"), results("a")], "tool results ['a'] answer the tool uses ['a', 'b']"),
        ([user("hi"), uses("a"), results("x")], "tool results ['x']"),
        ([user("hi"), assistant("hello"), results("a")], "tool results ['a'] answer the tool uses []"),
        ([user("hi"), {"role": "assistant", "content": []}], "no content"),
        ([user(" "), assistant("hello")], "blank text"),
        ([{"role": "user", "content": uses("a")["content"]}], "toolUse in a user message"),
    ],
)
def test_the_converse_checker_refuses_what_bedrock_refuses(messages: list[dict[str, Any]], problem: str | None) -> None:
    found = converse_violations(messages)

    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    ("messages", "ending"),
    [
        ([], []),
        ([user("hi"), assistant("hello")], []),
        ([user("hi")], [assistant("x")]),
        ([user("hi"), uses("a"), results("a")], [assistant("x")]),
        (
            [user("hi"), uses("a", "b")],
            [
                {
                    "role": "user",
                    "content": [
                        {"toolResult": {"toolUseId": i, "status": "error", "content": [{"text": NOT_RUN}]}}
                        for i in ("a", "b")
                    ],
                },
                assistant("x"),
            ],
        ),
    ],
    ids=["empty", "complete", "prompt", "tool-result", "tool-use"],
)
def test_an_unfinished_turn_is_ended_with_results_and_an_answer(
    messages: list[dict[str, Any]], ending: list[dict[str, Any]]
) -> None:
    assert turn_ending(messages, "x") == ending
    assert converse_violations([*messages, *ending, user("next")]) == []


@pytest.fixture
def repository(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[MongoDBSessionRepository]:
    """A repository of its own (its own client too): reads what any later reader of the session gets."""
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repository:
        yield repository


def stored_messages(repository: MongoDBSessionRepository, session_id: str) -> list[dict[str, Any]]:
    return [
        {"role": entry.message["role"], "content": entry.message["content"]}
        for entry in repository.list_messages(session_id, AGENT_ID)
    ]


class RecordingModel(OfflineDemoModel):
    """The offline demo model; it records every request, and can stall at one point of a turn.

    A stalled call waits until the turn is cancelled (as a provider stops an in-flight request), then
    ends its stream. ``stall_at``: ``"prompt"`` (the first model call of a turn), ``"tool_result"``
    (the model call after a tool result) or ``"answer"`` (after the first word of the answer).
    It calls ``slow_lookup`` for "Look up ...".
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[list[dict[str, Any]]] = []
        self.stall_at: str | None = None
        self.stalled = threading.Event()

    def _reply(self, messages: list[Any], tool_names: set[str]) -> dict[str, Any]:
        said = " ".join(block.get("text", "") for block in messages[-1]["content"])
        if "slow_lookup" in tool_names and said.startswith("Look up "):
            return self._use("slow_lookup", {"topic": said.removeprefix("Look up ")})
        return super()._reply(messages, tool_names)

    async def stream(
        self, messages: list[Any], tool_specs: list[Any] | None = None, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        self.requests.append(copy.deepcopy(messages))
        cancel: threading.Event = kwargs["cancel_signal"]
        after_tool = any("toolResult" in block for block in messages[-1]["content"])
        if self.stall_at == ("tool_result" if after_tool else "prompt"):
            await self.stall(cancel)
            return
        async for event in super().stream(messages, tool_specs, system_prompt, **kwargs):
            yield event
            if self.stall_at == "answer" and "text" in event.get("contentBlockDelta", {}).get("delta", {}):
                await self.stall(cancel)
                return

    async def stall(self, cancel: threading.Event) -> None:
        self.stalled.set()
        deadline = time.monotonic() + 10
        while not cancel.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("the stalled turn was never cancelled")
            await asyncio.sleep(0.01)


def slow_lookup_tool(stalled: threading.Event, cancelled: threading.Event | None = None, linger: float = 0) -> Any:
    """A tool that runs until the turn is cancelled (``stalled`` set on start, ``cancelled`` when told
    to stop), then takes ``linger`` seconds more to finish."""

    @tool(context=True)
    def slow_lookup(topic: str, tool_context: ToolContext) -> str:
        """Look a topic up. It is slow: it answers only once the turn is cancelled.

        Args:
            topic: What to look up.
        """
        stalled.set()
        if not tool_context.cancel_signal.wait(10):
            raise RuntimeError("the stalled turn was never cancelled")
        if cancelled is not None:
            cancelled.set()
        time.sleep(linger)
        return f"nothing found about {topic} before the turn was cancelled"

    return slow_lookup


def wait_for(condition: Callable[[], Any], what: str, state: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; instead: {state()}")
        time.sleep(0.02)
    return value


@pytest.mark.parametrize(
    ("point", "prompt", "before_the_cut"),
    [
        ("prompt", "Hello again", ["user"]),
        ("tool_use", "Look up tea", ["user", "assistant toolUse"]),
        ("tool_result", "What is 6 * 7?", ["user", "assistant toolUse", "user toolResult"]),
        ("answer", "Hello again", ["user"]),
    ],
    ids=["after-the-prompt", "after-a-tool-use", "after-the-tool-result", "during-the-answer"],
)
def test_a_turn_cut_off_by_a_disconnect_leaves_a_conversation_bedrock_accepts(
    mongodb_uri: str,
    database_name: str,
    repository: MongoDBSessionRepository,
    point: str,
    prompt: str,
    before_the_cut: list[str],
) -> None:
    model = RecordingModel()
    tools = {"tools": [calculator, slow_lookup_tool(model.stalled)]} if point == "tool_use" else {}
    with running_api(mongodb_uri, database_name, lambda: model, **tools) as api:
        session_id = new_session(api)
        chat(api, session_id, "Hi!")
        model.stall_at = None if point == "tool_use" else point

        # The client goes away while the turn is stalled at `point`.
        with (
            httpx.Client(base_url=api.base_url, timeout=20) as client,
            client.stream("POST", f"/chat/{session_id}/stream", json={"prompt": prompt}) as response,
        ):
            assert response.status_code == 200
            assert model.stalled.wait(10), f"the turn never reached {point}"
            assert [shape(m) for m in stored_messages(repository, session_id)[2:]] == before_the_cut
        model.stall_at = None

        # The backend ends the turn in storage: the answer says it was interrupted.
        stored = wait_for(
            lambda: (found := stored_messages(repository, session_id))[-1] == assistant(INTERRUPTED) and found,
            "the cut-off turn to be ended in storage",
            lambda: converse_violations([*stored_messages(repository, session_id), user("next")]),
        )
        assert stored[2] == user(prompt)
        assert converse_violations([*stored, user("next")]) == []

        # The next turn sends Bedrock a valid conversation, and succeeds.
        model.requests.clear()
        events = chat(api, session_id, "Are you still there?")

        assert events[-1][0] == "done", events
        sent = model.requests[0]
        assert converse_violations(sent) == []
        assert sent == [*stored, user("Are you still there?")]
        assert stored_messages(repository, session_id)[: len(stored)] == stored
        view = api.get(f"/sessions/{session_id}").json()
        assert [m["text"] for m in view["messages"] if m["role"] == "assistant"][1] == INTERRUPTED


def test_a_prompt_sent_right_after_a_disconnect_waits_for_the_cut_off_turn_to_end(
    mongodb_uri: str, database_name: str, repository: MongoDBSessionRepository
) -> None:
    model, cancelled = RecordingModel(), threading.Event()
    tools = [calculator, slow_lookup_tool(model.stalled, cancelled, linger=0.5)]
    with running_api(mongodb_uri, database_name, lambda: model, tools=tools) as api:
        session_id = new_session(api)
        with (
            httpx.Client(base_url=api.base_url, timeout=20) as client,
            client.stream("POST", f"/chat/{session_id}/stream", json={"prompt": "Look up tea"}) as response,
        ):
            assert response.status_code == 200
            assert model.stalled.wait(10)
        assert cancelled.wait(10)  # the backend noticed; the running tool still takes 0.5 s to finish

        events = chat(api, session_id, "Are you still there?")  # not refused with 409

    assert events[-1][0] == "done", events
    stored = stored_messages(repository, session_id)
    assert [shape(m) for m in stored] == [
        "user",
        "assistant toolUse",
        "user toolResult",
        "assistant",
        "user",
        "assistant",
    ]
    assert stored[3:5] == [assistant(INTERRUPTED), user("Are you still there?")]
    assert converse_violations(stored) == []
    assert model.requests[-1] == stored[:-1]


def shape(message: Mapping[str, Any]) -> str:
    kinds = [kind for kind in ("toolUse", "toolResult") if any(kind in b for b in message["content"])]
    return " ".join([message["role"], *kinds])


@pytest.mark.parametrize(
    "left",
    [
        [user("What is 2 + 2?")],
        [user("What is 2 + 2?"), uses("demo-crashed")],
        [user("What is 2 + 2?"), uses("demo-crashed"), results("demo-crashed")],
    ],
    ids=["prompt", "tool-use", "tool-result"],
)
def test_a_turn_left_unfinished_by_a_stopped_backend_is_ended_before_the_next(
    mongodb_uri: str, database_name: str, repository: MongoDBSessionRepository, left: list[dict[str, Any]]
) -> None:
    model = RecordingModel()
    with running_api(mongodb_uri, database_name, lambda: model) as api:
        session_id = new_session(api)
        chat(api, session_id, "Hi!")
        # What a backend killed mid-turn leaves: the turn's first messages, and no answer.
        for offset, message in enumerate(left, start=2):
            repository.create_message(session_id, AGENT_ID, SessionMessage.from_message(message, offset))
        model.requests.clear()

        events = chat(api, session_id, "Hello?")

    assert events[-1][0] == "done", events
    sent = model.requests[0]
    assert converse_violations(sent) == []
    stored = stored_messages(repository, session_id)
    assert sent == [*stored[:-1]]
    assert stored[2 : 2 + len(left)] == left
    assert stored[-3] == assistant(INTERRUPTED)
    assert converse_violations(stored) == []
