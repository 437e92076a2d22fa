"""FastAPI streaming: tokens from ``agent.stream_async`` as they are generated, the session in MongoDB.

    uv run python examples/example_fastapi_streaming.py           # start, stream a few answers, stop
    uv run python examples/example_fastapi_streaming.py --serve   # keep serving on PORT (default 8880)

    curl -N localhost:8880/chat -H 'Content-Type: application/json' -H 'Session-Id: my-session' \\
         -d '{"prompt": "What is 6 * 7?"}'                                   # plain text, token by token
    curl -N localhost:8880/chat -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \\
         -H 'Session-Id: my-session' -d '{"prompt": "And 7 * 8?"}'          # server-sent events

The "Optimized Pattern" for stateless servers: ``initialize_global_factory`` once in the lifespan;
per request ``get_global_factory().create_session_manager(session_id)`` (no new connection, no
index command) and a new agent that starts from the stored conversation. While the answer streams,
the session manager stores each message as the agent adds it, and the turn's metrics (tokens,
latency, cycles, tool use) with the final answer: nothing to append or sync by hand.

    POST /chat                    {"prompt": "..."} (+ optional Session-Id header; a new session if absent)
                                  text/plain: the answer's text as it is generated;
                                  Accept: text/event-stream: events "start" {session_id, restored_messages},
                                  "tool" {name, input}, "token" {text}, then "done" {session_id, metrics}
                                  (or "error" {detail}). The response's Session-Id header names the session.
    GET  /sessions/{id}/metrics   the metrics stored with each turn's final answer
    GET  /health                  the connection pool's statistics

Errors before the stream starts are JSON: 422 empty prompt, 413 oversized prompt, 400 bad session id,
404 unknown session (metrics), 503 MongoDB unreachable. Browsers may call it from any origin (CORS),
for the chat playground; restrict that in production.

Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model that streams word by word); see
examples/README.md. Needs the dev dependencies fastapi, uvicorn and httpx.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import uvicorn
from _local import database_name, demo_model, mongodb_uri, print_setup, serve_in_thread
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, StringConstraints
from strands import Agent
from strands.agent import AgentResult
from strands_tools import calculator

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionRepository,
    SessionConflictError,
    SessionNotFoundError,
    SessionStorageError,
    SessionTooLargeError,
    SessionValidationError,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)

logger = logging.getLogger("example_fastapi_streaming")

COLLECTION = "fastapi_streaming_sessions"
AGENT_ID = "assistant"
MAX_PROMPT_CHARS = 8_000
SYSTEM_PROMPT = "You are a concise assistant. Answer in Markdown. Use the calculator for arithmetic."


class ChatRequest(BaseModel):
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


router = APIRouter()


def build_agent(model: Any, session_id: str) -> Agent:
    """A new agent for this request, restored from the session's stored conversation."""
    manager = get_global_factory().create_session_manager(session_id)  # shares the factory's client
    return Agent(
        agent_id=AGENT_ID,
        model=model,
        tools=[calculator],
        system_prompt=SYSTEM_PROMPT,
        session_manager=manager,
        callback_handler=None,  # the events go to the HTTP response instead
    )


@router.post("/chat")
async def chat(
    body: ChatRequest, request: Request, session_id: Annotated[str | None, Header()] = None
) -> StreamingResponse:
    if len(body.prompt) > MAX_PROMPT_CHARS:
        raise HTTPException(413, f"prompt is {len(body.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    session_id = session_id or uuid.uuid4().hex
    # Restoring the session reads MongoDB with (blocking) pymongo: do it off the event loop. Errors
    # raised here (a bad session id, MongoDB down) still become a JSON error response.
    agent = await run_in_threadpool(build_agent, request.app.state.model, session_id)
    headers = {"Session-Id": session_id, "Cache-Control": "no-cache"}
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            events(agent, body.prompt, session_id), media_type="text/event-stream", headers=headers
        )
    return StreamingResponse(text(agent, body.prompt), media_type="text/plain; charset=utf-8", headers=headers)


async def text(agent: Agent, prompt: str) -> AsyncIterator[str]:
    """The answer's text, piece by piece. A failure mid-answer aborts the response (a truncated body)."""
    async for event in agent.stream_async(prompt):
        if "data" in event:
            yield event["data"]


async def events(agent: Agent, prompt: str, session_id: str) -> AsyncIterator[str]:
    """The turn as server-sent events: start, tool calls, tokens, and done with the turn's metrics."""
    yield sse("start", {"session_id": session_id, "restored_messages": len(agent.messages)})
    try:
        async for event in agent.stream_async(prompt):
            if "data" in event:
                yield sse("token", {"text": event["data"]})
            elif "message" in event:  # a message was added to the conversation (and stored)
                for block in event["message"]["content"]:
                    if "toolUse" in block:
                        yield sse("tool", {"name": block["toolUse"]["name"], "input": block["toolUse"]["input"]})
            elif "result" in event:
                yield sse("done", {"session_id": session_id, "metrics": turn_metrics(event["result"])})
    except Exception:
        # The status line (200) is long gone: report the failure in the stream. What was said before
        # the failure is stored; the client may retry the turn.
        logger.exception("session_id=<%s> | streaming failed", session_id)
        yield sse("error", {"detail": "the agent failed while answering; try again"})


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def turn_metrics(result: AgentResult) -> dict[str, Any]:
    """This turn's figures (the agent is new for this request, so its totals are this turn's)."""
    m = result.metrics
    return {
        "usage": dict(m.accumulated_usage),
        "latency_ms": m.accumulated_metrics.get("latencyMs", 0),
        "cycle_count": m.cycle_count,
        "tool_calls": {name: tool.call_count for name, tool in m.tool_metrics.items()},
    }


@router.get("/sessions/{session_id}/metrics")
def stored_metrics(session_id: str, request: Request) -> dict[str, Any]:
    # The repository, not a manager: a manager would create an unknown session instead of a 404.
    sessions: MongoDBSessionRepository = request.app.state.sessions
    return {"session_id": session_id, "turns": sessions.get_message_metrics(session_id, AGENT_ID)}


@router.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "connection_pool": MongoDBConnectionPool.get_pool_stats()}


# The library's errors, as HTTP statuses (the most specific class wins).
ERROR_STATUS: dict[type[Exception], int] = {
    SessionTooLargeError: 413,
    SessionValidationError: 400,
    SessionNotFoundError: 404,
    SessionConflictError: 409,
    SessionStorageError: 503,
}


async def session_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS)
    if isinstance(exc, SessionStorageError):
        logger.error("path=<%s> | storage error: %s", request.url.path, exc)
        detail = "the session store is unavailable; try again"
    else:
        detail = str(exc)
    return JSONResponse(status_code=status, content={"detail": detail, "error": type(exc).__name__})


def create_app(connection_string: str | None = None, database: str | None = None, model: Any = None) -> FastAPI:
    """Build the app. Without arguments: MONGODB_URI (or the embedded server), EXAMPLES_DATABASE, demo model."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
            uri = connection_string or stack.enter_context(mongodb_uri())
            factory = initialize_global_factory(
                uri, database_name=database or database_name(), collection_name=COLLECTION, maxPoolSize=100
            )
            app.state.sessions = factory.repository  # reads that must not create a session (404s)
            # One model for all requests; the offline one waits a little between words so you can see it stream.
            app.state.model = model if model is not None else demo_model(stream_delay=0.02)
            try:
                yield
            finally:
                close_global_factory()

    app = FastAPI(title="mongodb-session-manager: FastAPI streaming example", lifespan=lifespan)
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"], expose_headers=["Session-Id"]
    )
    app.include_router(router)
    for error in ERROR_STATUS:
        app.add_exception_handler(error, session_error)
    return app


app = create_app()  # `uvicorn example_fastapi_streaming:app --app-dir examples` works too

SESSION_ID = "fastapi-streaming-session"


def stream_events(client: httpx.Client, prompt: str) -> dict[str, Any]:
    """POST /chat asking for server-sent events; print them as they arrive; return the "done" event."""
    print(f"\nuser:  {prompt}")
    done: dict[str, Any] = {}
    headers = {"Session-Id": SESSION_ID, "Accept": "text/event-stream"}
    with client.stream("POST", "/chat", json={"prompt": prompt}, headers=headers) as response:
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "start":
                    print(f"       [start: {data['restored_messages']} stored messages restored]\nagent: ", end="")
                elif event == "tool":
                    print(f"[calling {data['name']} {json.dumps(data['input'])}] ", end="", flush=True)
                elif event == "token":
                    print(data["text"], end="", flush=True)
                elif event == "done":
                    done = data
                    print(f"\n       [done: {json.dumps(data['metrics'])}]")
                elif event == "error":
                    print(f"\n       [error: {data['detail']}]")
    return done


def demo(base_url: str) -> None:
    """Act as a client: stream a few answers, read the stored metrics, show refused requests."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        first = client.get(f"/sessions/{SESSION_ID}/metrics")
        if first.status_code == 200:
            print(f"Resumed session {SESSION_ID!r} from an earlier run ({len(first.json()['turns'])} turns stored).")
        else:
            print(f"New session {SESSION_ID!r}. Run this example again to see it resume.")

        print("\nServer-sent events; each request builds a new manager and agent from the stored session:")
        stream_events(client, "What is (3 + 4) * 6?")
        stream_events(client, "What did I ask you before?")

        print("\nPlain text streaming (what the chat playground reads):")
        prompt = "Thanks! Please stream a short goodbye."
        print(f"user:  {prompt}\nagent: ", end="")
        with client.stream("POST", "/chat", json={"prompt": prompt}, headers={"Session-Id": SESSION_ID}) as response:
            for chunk in response.iter_text():
                print(chunk, end="", flush=True)
        print()

        print(f"\nMetrics stored with each turn's final answer (GET /sessions/{SESSION_ID}/metrics):")
        for turn in client.get(f"/sessions/{SESSION_ID}/metrics").json()["turns"][-3:]:
            m = turn["event_loop_metrics"]
            print(
                f"  message {turn['message_id']:>3}: {m['usage']['totalTokens']} tokens, "
                f"{m['cycle_count']} cycle(s), tools {sorted(m['tool_usage'])}"
            )

        print("\nRequests the API refuses:")
        for response in (
            client.post("/chat", json={"prompt": ""}),
            client.post("/chat", json={"prompt": "x" * (MAX_PROMPT_CHARS + 1)}),
            client.post("/chat", json={"prompt": "hi"}, headers={"Session-Id": "a/b"}),
            client.get("/sessions/no-such-session/metrics"),
        ):
            print(f"{response.request.method} {response.request.url.path} -> {response.status_code}")
            print(f"    {response.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description="FastAPI streaming example for mongodb-session-manager.")
    parser.add_argument("--serve", action="store_true", help="keep serving instead of making demo requests")
    args = parser.parse_args()
    port = int(os.environ.get("PORT", "8880"))
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)
        if args.serve:
            uvicorn.run(create_app(uri), host=os.environ.get("HOST", "127.0.0.1"), port=port)
            return
        # Serve in a background thread, act as a client, then stop.
        with serve_in_thread(create_app(uri), port) as base_url:
            print(f"Serving on {base_url} (run with --serve to keep serving).")
            demo(base_url)


if __name__ == "__main__":
    main()
