"""The chat playground's HTTP API (``playground/chat/backend_fastapi_streaming.py``) over real HTTP.

Each test runs the app with uvicorn on a free port against the test server and a fresh database,
talks to it with httpx, and checks both the answers and what MongoDB holds afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from mongodb_session_manager.mongodb_session_repository import DEFAULT_COLLECTION_NAME
from playground.chat._servers import serve_app
from playground.chat.backend_fastapi_streaming import AGENT_ID, create_app

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
    assert view["metadata"] == {"client": "chat playground"}
    assert sessions.count_documents({"_id": session_id}) == 1


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
    assert stored["metadata"]["title"] == "Hello, I am Ada."

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
        {"role": "tool", "text": 'calculator(expression="(17 + 25) * 2")'},
        {"role": "tool", "text": "→ 84"},
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
    assert view["metadata"] == {"client": "chat playground", "title": "Hi!"}


def test_the_agent_keeps_notes_in_the_session_metadata(api: httpx.Client) -> None:
    session_id = new_session(api)

    events = chat(api, session_id, "My name is Ada.")

    tools = [data["text"] for name, data in events if name == "tool"]
    assert tools[0] == 'manage_metadata(action="set", metadata={"name": "Ada"})'
    view = api.get(f"/sessions/{session_id}").json()
    assert view["metadata"] == {"client": "chat playground", "title": "My name is Ada.", "name": "Ada"}
    assert view["turns"][0]["tools"] == {"manage_metadata": 1}


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


def test_a_failing_turn_ends_the_stream_with_an_error_event(mongodb_uri: str, database_name: str) -> None:
    with running_api(mongodb_uri, database_name, BrokenModel) as api:
        session_id = new_session(api)

        events = chat(api, session_id, "Hello")

    assert events[-1][0] == "error"
    assert "the model is unavailable" in events[-1][1]["detail"]
    assert "done" not in [name for name, _ in events]
