"""Every example in ``examples/`` runs end to end, offline, and stores what it says it stores.

Each example runs as a user would run it (``python examples/<name>.py``) with ``MONGODB_URI`` set to
the test server, ``STRANDS_MODEL=offline`` and a database of its own (``EXAMPLES_DATABASE``); the
test then reads MongoDB directly. Examples whose point is resuming across runs run twice. One
example also runs on its default embedded server (no ``MONGODB_URI``) with a temporary data folder,
which the test then opens as the next run would. The FastAPI apps are also driven in-process
through a real HTTP server (uvicorn in a thread) and client (httpx).

Importing Strands costs seconds per process, so the selected examples are all started in parallel
when the first test needs one; each test then waits for its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from mongodb_session_manager import MongoDBConnectionPool, close_global_factory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT = 240
Runs = list[subprocess.CompletedProcess[str]]


def example(name: str, times: int = 1, embedded: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the example runs a test needs, so the ``examples`` fixture can start them early."""

    def mark(test: Callable[..., Any]) -> Callable[..., Any]:
        test.example_run = (name, times, embedded)  # type: ignore[attr-defined]
        return test

    return mark


class ExampleRuns:
    """Runs examples in subprocesses, in parallel, each with its own database (or data folder)."""

    def __init__(self, mongodb_uri: str, tmp: Path) -> None:
        self.mongodb_uri = mongodb_uri
        self.tmp = tmp
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        self.futures: dict[tuple[str, int, bool], Future[Runs]] = {}
        self.databases: dict[tuple[str, int, bool], str] = {}

    def start(self, name: str, times: int = 1, embedded: bool = False) -> None:
        key = (name, times, embedded)
        if key not in self.futures:
            self.databases[key] = f"msm_examples_{name.removeprefix('example_')[:20]}_{uuid.uuid4().hex[:6]}"
            self.futures[key] = self.pool.submit(self._run, name, times, embedded, self.databases[key])

    def get(self, name: str, times: int = 1, embedded: bool = False) -> tuple[Runs, str]:
        """The finished runs of an example (each asserted to exit 0) and its database name."""
        self.start(name, times, embedded)
        key = (name, times, embedded)
        runs = self.futures[key].result()
        for i, run in enumerate(runs, 1):
            assert run.returncode == 0, f"{name} run {i} exited {run.returncode}\n{run.stdout}\n{run.stderr}"
        return runs, self.databases[key]

    def _run(self, name: str, times: int, embedded: bool, database: str) -> Runs:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "STRANDS_"))}
        env.update(STRANDS_MODEL="offline", EXAMPLES_DATABASE=database, PORT="0", PYTHONUNBUFFERED="1")
        if embedded:
            env.pop("MONGODB_URI", None)
            env["EXAMPLES_DATA_DIR"] = str(self.tmp / database)
        else:
            env["MONGODB_URI"] = self.mongodb_uri
        runs = []
        for _ in range(times):
            runs.append(
                subprocess.run(
                    [sys.executable, str(EXAMPLES / f"{name}.py")],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=TIMEOUT,
                )
            )
            if runs[-1].returncode != 0:
                break
        return runs


@pytest.fixture(scope="module")
def examples(
    request: pytest.FixtureRequest,
    mongodb_uri: str,
    mongo_client: MongoClient[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ExampleRuns]:
    runs = ExampleRuns(mongodb_uri, tmp_path_factory.mktemp("examples"))
    for item in request.session.items:  # start every selected test's examples now, in parallel
        spec = getattr(getattr(item, "function", None), "example_run", None)
        if spec is not None and getattr(item, "module", None) is request.module:
            runs.start(*spec)
    try:
        yield runs
    finally:
        runs.pool.shutdown(wait=True, cancel_futures=True)
        for database in runs.databases.values():
            mongo_client.drop_database(database)


def agent_messages(session: dict[str, Any], agent_id: str) -> list[dict[str, Any]]:
    agent = session["agents"][agent_id]
    assert agent["message_count"] == len(agent["messages"])
    assert [entry["message_id"] for entry in agent["messages"]] == list(range(len(agent["messages"])))
    return list(agent["messages"])


def tool_calls(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (block["toolUse"]["name"], block["toolUse"]["input"])
        for entry in messages
        for block in entry["message"]["content"]
        if "toolUse" in block
    ]


def metrics(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry["event_loop_metrics"] for entry in messages if "event_loop_metrics" in entry]


# ------------------------------------------------------------------------------ scripts


@example("demo", times=2)
def test_demo_resumes_on_its_second_run(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (first, second), database = examples.get("demo", times=2)
    assert "offline demo model" in first.stdout
    assert "New session 'demo-session'" in first.stdout
    assert "The calculator says: 42." in first.stdout and "The calculator says: 126." in first.stdout
    assert "Resumed session 'demo-session': 8 stored messages restored." in second.stdout
    assert "The calculator says: 150." in second.stdout

    session = mongo_client[database]["sessions"].find_one({"_id": "demo-session"})
    assert session is not None
    messages = agent_messages(session, "default")
    assert len(messages) == 12  # three turns: question, tool call, tool result, answer
    assert [c[1]["expression"] for c in tool_calls(messages)] == ["17 + 25", "(17 + 25) * 3", "(17 + 25 + 8) * 3"]
    assert len(metrics(messages)) == 3
    assert session["metadata"] == {"runs": 2, "topic": "party planning"}
    assert [f["comment"] for f in session["feedbacks"]] == ["run 1: helpful", "run 2: helpful"]


@example("example_calculator_tool", times=2)
def test_calculator_tool(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (first, second), database = examples.get("example_calculator_tool", times=2)
    assert "New session 'calculator-session'" in first.stdout
    assert "The calculator says: 20." in first.stdout and "The calculator says: 23." in first.stdout
    assert "#1   assistant toolUse calculator" in first.stdout
    assert "Resumed: 8 messages restored" in first.stdout
    assert "Before that you said: 'And 11 + 12?'" in first.stdout
    assert "Resumed session 'calculator-session' from an earlier run: 10 messages restored." in second.stdout

    session = mongo_client[database]["calculator_sessions"].find_one({"_id": "calculator-session"})
    assert session is not None
    messages = agent_messages(session, "calculator-agent")
    assert len(messages) == 20
    assert tool_calls(messages).count(("calculator", {"expression": "10 + 10"})) == 2
    turns = metrics(messages)
    assert len(turns) == 6
    assert turns[0]["tool_usage"]["calculator"]["call_count"] == 1
    assert turns[0]["usage"]["totalTokens"] > 0 and turns[0]["cycle_count"] == 2
    assert turns[2]["tool_usage"] == {}  # "What did I ask you before?"


@example("example_stream_async")
def test_stream_async(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_stream_async")
    assert (
        '[calling calculator {"expression": "(3 + 4) * 6"}] (offline demo model) The calculator says: 42.' in run.stdout
    )
    assert "Resumed: 6 messages restored." in run.stdout
    assert "Before that you said: 'What is (3 + 4) * 6?'" in run.stdout

    session = mongo_client[database]["stream_sessions"].find_one({"_id": "stream-async-session"})
    assert session is not None
    messages = agent_messages(session, "streaming-agent")
    assert len(messages) == 8
    assert [entry["message_id"] for entry in messages if "event_loop_metrics" in entry] == [1, 5, 7]
    assert messages[5]["message"]["content"] == [{"text": "(offline demo model) The calculator says: 42."}]


@example("example_metadata_tool")
def test_metadata_tool(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_metadata_tool")
    assert "Noted in this session's metadata: name, preference." in run.stdout
    assert "Forgotten: favourite_colour." in run.stdout
    assert (
        "From this session's metadata I know: channel = 'web', name = 'Ada', preference = 'e-mail notifications'."
        in run.stdout
    )

    session = mongo_client[database]["metadata_tool_sessions"].find_one({"_id": "metadata-tool-session"})
    assert session is not None
    assert session["metadata"] == {"channel": "web", "name": "Ada", "preference": "e-mail notifications"}
    assert [call[1]["action"] for call in tool_calls(agent_messages(session, "notes-agent"))] == [
        "set",
        "set",
        "delete",
        "get",
    ]


@example("example_metadata_tool_direct")
def test_metadata_tool_direct(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_metadata_tool_direct")
    assert run.stdout.count("-> error:") == 2
    assert "must not start with '$'" in run.stdout
    assert "Sessions whose metadata has user_name 'Bob Smith' and plan 'pro': ['metadata-tool-direct-session']" in (
        run.stdout
    )
    assert "I know: plan = 'pro'" in run.stdout

    session = mongo_client[database]["metadata_tool_sessions"].find_one({"_id": "metadata-tool-direct-session"})
    assert session is not None
    assert session["metadata"] == {
        "user_name": "Bob Smith",
        "preferences": {"theme": "dark", "language": "en", "notifications": True},
        "visits": 1,
        "plan": "pro",
    }


@example("example_metadata_tool_direct", embedded=True)
def test_without_mongodb_uri_an_example_keeps_its_data_in_a_local_folder(examples: ExampleRuns) -> None:
    (run,), database = examples.get("example_metadata_tool_direct", embedded=True)
    folder = examples.tmp / database
    assert f"Storage: embedded SecantusDB, data in {folder}/" in run.stdout
    assert not folder.with_name(folder.name + ".server").exists()  # the example stopped its server

    # What the next run will find: open the folder as the next run would.
    from secantus import SecantusDBServer

    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(folder), cache_size="64M")
    server.start()
    try:
        uri = f"mongodb://127.0.0.1:{server.address[1]}/?directConnection=true"
        with MongoClient[dict[str, Any]](uri) as client:
            session = client[database]["metadata_tool_sessions"].find_one({"_id": "metadata-tool-direct-session"})
    finally:
        server.stop()
    assert session is not None and session["metadata"]["user_name"] == "Bob Smith"


@example("example_metadata_hook")
def test_metadata_hook(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_metadata_hook")
    assert "(cache hits so far: 1)" in run.stdout
    assert "ValueError from the hook: metadata fields ['account_id'] are managed by the application" in run.stdout
    assert "SessionValidationError: metadata key=<$set>" in run.stdout
    assert "action=<update>, keys=<['favourite_colour']> | metadata" in run.stdout  # the agent's tool, audited
    assert not [line for line in run.stdout.splitlines() if "[metadata-audit]" in line and "ACME" in line]

    session = mongo_client[database]["metadata_hook_sessions"].find_one({"_id": "metadata-hook-session"})
    assert session is not None
    metadata = session["metadata"]
    assert metadata.pop("updated_at")  # stamped by the validation hook
    assert metadata == {
        "customer": "ACME",
        "priority": "high",
        "favourite_colour": "green",
        "updated_by": "example-app",
    }


@example("example_feedback_hook")
def test_feedback_hook(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_feedback_hook")
    assert "ValueError from the hook: a thumbs-down needs a comment" in run.stdout
    assert "SessionValidationError: feedback.rating=<'maybe'>" in run.stdout
    assert "thumbs-down: a human should look at this conversation" in run.stdout
    assert "This run: ratings {'up': 1, 'down': 1, 'None': 1}, alerts raised: 1" in run.stdout
    assert "3 feedback entries stored in session 'feedback-hook-session'." in run.stdout

    session = mongo_client[database]["feedback_hook_sessions"].find_one({"_id": "feedback-hook-session"})
    assert session is not None
    assert [(f["rating"], f["comment"]) for f in session["feedbacks"]] == [
        ("up", "Quick and correct!"),
        ("down", "I wanted the working shown too."),
        (None, "Saving this for later."),
    ]
    assert all(f["created_at"] is not None for f in session["feedbacks"])
    assert len(agent_messages(session, "default")) == 4


@example("example_fastapi")
def test_fastapi_script(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_fastapi")
    assert "New session 'fastapi-session'" in run.stdout
    assert "The second request resumed the session: its agent started from 4 messages." in run.stdout
    for status in ("POST /chat -> 200", "-> 201", "POST /chat -> 422", "POST /chat -> 413"):
        assert status in run.stdout
    assert "GET /sessions/no-such-session/metadata -> 404" in run.stdout
    assert "PATCH /sessions/fastapi-session/metadata -> 400" in run.stdout

    session = mongo_client[database]["fastapi_sessions"].find_one({"_id": "fastapi-session"})
    assert session is not None
    messages = agent_messages(session, "assistant")
    assert len(messages) == 6
    assert len(metrics(messages)) == 2
    assert session["metadata"] == {"topic": "arithmetic"}
    assert [(f["rating"], f["comment"]) for f in session["feedbacks"]] == [("up", "Correct!")]
    assert mongo_client[database]["fastapi_sessions"].find_one({"_id": "no-such-session"}) is None


@example("example_fastapi_streaming")
def test_fastapi_streaming_script(examples: ExampleRuns, mongo_client: MongoClient[dict[str, Any]]) -> None:
    (run,), database = examples.get("example_fastapi_streaming")
    assert "[start: 0 stored messages restored]" in run.stdout
    assert "[start: 4 stored messages restored]" in run.stdout
    assert '[calling calculator {"expression": "(3 + 4) * 6"}] (offline demo model) The calculator says: 42.' in (
        run.stdout
    )
    for status in ("-> 422", "-> 413", "-> 400", "GET /sessions/no-such-session/metrics -> 404"):
        assert status in run.stdout

    session = mongo_client[database]["fastapi_streaming_sessions"].find_one({"_id": "fastapi-streaming-session"})
    assert session is not None
    messages = agent_messages(session, "assistant")
    assert len(messages) == 8
    assert [entry["message_id"] for entry in messages if "event_loop_metrics" in entry] == [3, 5, 7]


# ------------------------------------------------------------------------------ the apps, in-process


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the request models' annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def served(
    mongodb_uri: str, database_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., httpx.Client]]:
    """``served(module, **create_app_kwargs)``: the module's app on uvicorn, and an httpx client for it."""
    monkeypatch.setenv("STRANDS_MODEL", "offline")  # even where AWS credentials are configured
    with contextlib.ExitStack() as stack:

        def serve(module: ModuleType, **kwargs: Any) -> httpx.Client:
            app = module.create_app(mongodb_uri, database_name, **kwargs)
            base_url = stack.enter_context(module.serve_in_thread(app))
            return stack.enter_context(httpx.Client(base_url=base_url, timeout=60))

        try:
            yield serve
        finally:
            stack.close()
            close_global_factory()
            MongoDBConnectionPool.close()


def test_fastapi_app(served: Callable[..., httpx.Client], mongo_client: MongoClient[Any], database_name: str) -> None:
    client = served(load("example_fastapi"))
    stored = mongo_client[database_name]["fastapi_sessions"]

    first = client.post("/chat", json={"prompt": "What is 2 + 3?"})  # no Session-Id: a new session
    assert first.status_code == 200, first.text
    body = first.json()
    session_id = body["session_id"]
    assert body["response"] == "(offline demo model) The calculator says: 5."
    assert body["restored_messages"] == 0
    assert body["metrics"]["tool_calls"] == {"calculator": 1} and body["metrics"]["usage"]["totalTokens"] > 0

    second = client.post("/chat", json={"prompt": "  And what did I ask?  "}, headers={"Session-Id": session_id})
    assert second.status_code == 200 and second.json()["restored_messages"] == 4
    assert "Before that you said: 'What is 2 + 3?'" in second.json()["response"]
    messages = agent_messages(stored.find_one({"_id": session_id}) or {}, "assistant")
    assert messages[4]["message"]["content"] == [{"text": "And what did I ask?"}]  # stripped
    assert len(metrics(messages)) == 2

    patched = client.patch(f"/sessions/{session_id}/metadata", json={"topic": "sums", "draft": 1})
    assert patched.json() == {"session_id": session_id, "metadata": {"topic": "sums", "draft": 1}}
    patched = client.patch(f"/sessions/{session_id}/metadata", json={"draft": None, "lang": "en"})
    assert patched.json()["metadata"] == {"topic": "sums", "lang": "en"}
    assert client.get(f"/sessions/{session_id}/metadata").json()["metadata"] == {"topic": "sums", "lang": "en"}
    added = client.post(f"/sessions/{session_id}/feedback", json={"rating": "down", "comment": "Too short"})
    assert added.status_code == 201 and added.json()["feedback"]["rating"] == "down"
    feedbacks = client.get(f"/sessions/{session_id}/feedback").json()["feedbacks"]
    assert [(f["rating"], f["comment"]) for f in feedbacks] == [("down", "Too short")]
    assert (stored.find_one({"_id": session_id}) or {})["metadata"] == {"topic": "sums", "lang": "en"}

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["connection_pool"]["initialized"] is True


def test_fastapi_app_errors(
    served: Callable[..., httpx.Client], mongo_client: MongoClient[Any], database_name: str
) -> None:
    module = load("example_fastapi")
    client = served(module)
    limit = module.MAX_PROMPT_CHARS

    def error(response: httpx.Response, status: int) -> Any:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()["detail"]

    assert error(client.post("/chat", json={"prompt": ""}), 422)[0]["loc"] == ["body", "prompt"]
    error(client.post("/chat", json={"prompt": " \n "}), 422)
    error(client.post("/chat", json={}), 422)
    error(client.post("/chat", content=b"not json", headers={"Content-Type": "application/json"}), 422)
    assert "limit is" in error(client.post("/chat", json={"prompt": "x" * (limit + 1)}), 413)
    assert "path separators" in error(client.post("/chat", json={"prompt": "hi"}, headers={"Session-Id": "a/b"}), 400)
    for path in ("/sessions/nobody/metadata", "/sessions/nobody/feedback"):
        assert "does not exist" in error(client.get(path), 404)
    error(client.patch("/sessions/nobody/metadata", json={"a": 1}), 404)
    error(client.post("/sessions/nobody/feedback", json={"rating": "up", "comment": ""}), 404)
    assert mongo_client[database_name]["fastapi_sessions"].count_documents({}) == 0  # nothing was created

    session_id = client.post("/chat", json={"prompt": "hello"}).json()["session_id"]
    assert "must not start with '$'" in error(client.patch(f"/sessions/{session_id}/metadata", json={"$gt": 1}), 400)
    error(client.patch(f"/sessions/{session_id}/metadata", json={}), 422)
    error(client.post(f"/sessions/{session_id}/feedback", json={"rating": "meh"}), 422)
    assert "metadata" not in (mongo_client[database_name]["fastapi_sessions"].find_one({"_id": session_id}) or {})


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """Parse a server-sent event stream into ``(event, data)`` pairs, in arrival order."""
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_fastapi_streaming_app(
    served: Callable[..., httpx.Client], mongo_client: MongoClient[Any], database_name: str
) -> None:
    module = load("example_fastapi_streaming")
    client = served(module, model=module.demo_model(stream_delay=0.005))
    stored = mongo_client[database_name]["fastapi_streaming_sessions"]

    headers = {"Accept": "text/event-stream"}
    with client.stream("POST", "/chat", json={"prompt": "What is 6 * 7?"}, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        session_id = response.headers["session-id"]
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[1] == "tool" and names[-1] == "done"
    assert set(names[2:-1]) == {"token"}
    assert events[0][1] == {"session_id": session_id, "restored_messages": 0}
    assert events[1][1] == {"name": "calculator", "input": {"expression": "6 * 7"}}
    tokens = [data["text"] for name, data in events if name == "token"]
    answer = "(offline demo model) The calculator says: 42."
    assert tokens == [word if i == 0 else " " + word for i, word in enumerate(answer.split(" "))]  # in order
    done = events[-1][1]
    assert done["session_id"] == session_id and done["metrics"]["tool_calls"] == {"calculator": 1}

    messages = agent_messages(stored.find_one({"_id": session_id}) or {}, "assistant")
    assert messages[-1]["message"]["content"] == [{"text": answer}]
    assert messages[-1]["event_loop_metrics"]["usage"] == done["metrics"]["usage"]

    # Plain text on the same session: the chunks, in order, are the stored answer.
    with client.stream("POST", "/chat", json={"prompt": "What did I ask?"}, headers={"Session-Id": session_id}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        chunks = list(r.iter_text())
    messages = agent_messages(stored.find_one({"_id": session_id}) or {}, "assistant")
    assert len(messages) == 6
    assert "".join(chunks) == messages[-1]["message"]["content"][0]["text"]
    assert "Before that you said: 'What is 6 * 7?'" in "".join(chunks)

    turns = client.get(f"/sessions/{session_id}/metrics").json()["turns"]
    assert [turn["message_id"] for turn in turns] == [3, 5]

    preflight = client.options(
        "/chat", headers={"Origin": "http://localhost:8881", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] in (
        "*",
        "http://localhost:8881",
    )


def test_fastapi_streaming_app_errors(
    served: Callable[..., httpx.Client], mongo_client: MongoClient[Any], database_name: str
) -> None:
    module = load("example_fastapi_streaming")
    client = served(module)
    for response, status in [
        (client.post("/chat", json={"prompt": ""}), 422),
        (client.post("/chat", json={"prompt": "x" * (module.MAX_PROMPT_CHARS + 1)}), 413),
        (client.post("/chat", json={"prompt": "hi"}, headers={"Session-Id": "a/b"}), 400),
        (client.get("/sessions/nobody/metrics"), 404),
    ]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json" and response.json()["detail"]
    assert mongo_client[database_name]["fastapi_streaming_sessions"].count_documents({}) == 0
