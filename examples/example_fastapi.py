"""FastAPI: a chat endpoint with one session manager per request, plus a session's metadata and feedback.

    uv run python examples/example_fastapi.py           # start, make a few requests, print them, stop
    uv run python examples/example_fastapi.py --serve   # keep serving on PORT (default 8000)

    curl -s localhost:8000/chat -H 'Content-Type: application/json' -H 'Session-Id: my-session' \\
         -d '{"prompt": "What is 6 * 7?"}'

The factory is created once, in the app's lifespan (``initialize_global_factory``); each request
builds a cheap manager from it (``get_global_factory().create_session_manager(session_id)``: no new
connection, no index command) and an agent that starts from the stored conversation. Nothing lives
in the server's memory between requests, so any number of workers or containers can serve a session.

    POST  /chat                    {"prompt": "..."} (+ optional Session-Id header; a new session if absent)
                                   -> {"session_id", "response", "restored_messages", "metrics"}
    GET   /sessions/{id}/metadata  -> {"session_id", "metadata"}
    PATCH /sessions/{id}/metadata  {"field": value, ...}; a null value deletes the field (JSON Merge Patch)
    GET   /sessions/{id}/feedback  -> {"session_id", "feedbacks": [...]}
    POST  /sessions/{id}/feedback  {"rating": "up" | "down" | null, "comment": "..."}
    GET   /health                  the connection pool's statistics

Errors are JSON: 422 for an empty or malformed request, 413 for an oversized prompt, 400 for values
the library refuses (bad session id or metadata key), 404 for an unknown session, 409 when another
request appended to the same session first, 503 when MongoDB is unreachable.

Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model); see examples/README.md. Needs the dev
dependencies fastapi, uvicorn and httpx.
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
from typing import Annotated, Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import uvicorn
from _local import database_name, demo_model, mongodb_uri, print_setup, serve_in_thread
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
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

logger = logging.getLogger("example_fastapi")

COLLECTION = "fastapi_sessions"
AGENT_ID = "assistant"
MAX_PROMPT_CHARS = 8_000
SYSTEM_PROMPT = "You are a concise assistant. Use the calculator for arithmetic and manage_metadata to note user facts."


class ChatRequest(BaseModel):
    prompt: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class ChatResponse(BaseModel):
    session_id: str
    response: str
    restored_messages: int  # how many stored messages this request's agent started from
    metrics: dict[str, Any]


class FeedbackRequest(BaseModel):
    rating: Literal["up", "down"] | None = None
    comment: str = ""


router = APIRouter()


@router.post("/chat")
def chat(body: ChatRequest, request: Request, session_id: Annotated[str | None, Header()] = None) -> ChatResponse:
    # A plain `def`: FastAPI runs it in its thread pool, so the blocking MongoDB calls and the agent's
    # synchronous `agent(...)` never stall the event loop.
    if len(body.prompt) > MAX_PROMPT_CHARS:
        raise HTTPException(413, f"prompt is {len(body.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    session_id = session_id or uuid.uuid4().hex
    manager = get_global_factory().create_session_manager(session_id)  # shares the factory's client
    agent = Agent(
        agent_id=AGENT_ID,
        model=request.app.state.model,
        tools=[calculator, manager.get_metadata_tool()],
        system_prompt=SYSTEM_PROMPT,
        session_manager=manager,  # restores the conversation now, stores each new message as it happens
        callback_handler=None,
    )
    restored = len(agent.messages)
    result = agent(body.prompt)
    return ChatResponse(
        session_id=session_id, response=str(result).strip(), restored_messages=restored, metrics=turn_metrics(result)
    )


def turn_metrics(result: AgentResult) -> dict[str, Any]:
    """This turn's figures. The agent is new for this request, so its totals are this turn's; the
    manager stores the same figures with the answer (``manager.get_message_metrics()``)."""
    m = result.metrics
    return {
        "usage": dict(m.accumulated_usage),
        "latency_ms": m.accumulated_metrics.get("latencyMs", 0),
        "cycle_count": m.cycle_count,
        "tool_calls": {name: tool.call_count for name, tool in m.tool_metrics.items()},
    }


# The session endpoints use the repository, not a manager: building a manager creates the session
# when it does not exist, and these must answer 404 for an unknown session instead.
@router.get("/sessions/{session_id}/metadata")
def get_metadata(session_id: str, request: Request) -> dict[str, Any]:
    return {"session_id": session_id, "metadata": request.app.state.sessions.get_metadata(session_id)}


@router.patch("/sessions/{session_id}/metadata")
def patch_metadata(session_id: str, changes: dict[str, Any], request: Request) -> dict[str, Any]:
    sessions: MongoDBSessionRepository = request.app.state.sessions
    if not changes:
        raise HTTPException(422, "send at least one field")
    # Two commands; each is checked before it is sent, but a key refused by the second leaves the
    # first applied. Send updates and deletions separately if that matters to you.
    updates = {key: value for key, value in changes.items() if value is not None}
    deletions = [key for key, value in changes.items() if value is None]
    if updates:
        sessions.update_metadata(session_id, updates)
    if deletions:
        sessions.delete_metadata(session_id, deletions)
    return {"session_id": session_id, "metadata": sessions.get_metadata(session_id)}


@router.get("/sessions/{session_id}/feedback")
def get_feedback(session_id: str, request: Request) -> dict[str, Any]:
    return {"session_id": session_id, "feedbacks": request.app.state.sessions.get_feedbacks(session_id)}


@router.post("/sessions/{session_id}/feedback", status_code=201)
def add_feedback(session_id: str, feedback: FeedbackRequest, request: Request) -> dict[str, Any]:
    stored = request.app.state.sessions.add_feedback(session_id, feedback.model_dump())
    return {"session_id": session_id, "feedback": stored}


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
            app.state.model = model if model is not None else demo_model()  # one model for all requests
            try:
                yield
            finally:
                close_global_factory()

    app = FastAPI(title="mongodb-session-manager: FastAPI example", lifespan=lifespan)
    app.include_router(router)
    for error in ERROR_STATUS:
        app.add_exception_handler(error, session_error)
    return app


app = create_app()  # `uvicorn example_fastapi:app --app-dir examples` works too

SESSION_ID = "fastapi-session"


def show(response: httpx.Response) -> dict[str, Any]:
    """Print a request and its JSON response; return the body."""
    request = response.request
    body = response.json()
    print(f"{request.method} {request.url.path} -> {response.status_code}\n    {json.dumps(body, default=str)}")
    return body  # type: ignore[no-any-return]


def demo(base_url: str) -> None:
    """Make a few requests as a client would and print them."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        headers = {"Session-Id": SESSION_ID}
        print("\nTwo chat requests on one session; each builds a new manager and agent:")
        first = show(client.post("/chat", json={"prompt": "What is 6 * 7?"}, headers=headers))
        second = show(client.post("/chat", json={"prompt": "What did I ask you before?"}, headers=headers))
        if first["restored_messages"]:
            print(
                f"Resumed session {SESSION_ID!r} from an earlier run: {first['restored_messages']} messages restored."
            )
        else:
            print(f"New session {SESSION_ID!r}. Run this example again to see it resume.")
        print(f"The second request resumed the session: its agent started from {second['restored_messages']} messages.")

        print("\nThe session's metadata and feedback:")
        show(client.patch(f"/sessions/{SESSION_ID}/metadata", json={"topic": "arithmetic", "draft": True}))
        show(client.patch(f"/sessions/{SESSION_ID}/metadata", json={"draft": None}))
        show(client.post(f"/sessions/{SESSION_ID}/feedback", json={"rating": "up", "comment": "Correct!"}))
        show(client.get(f"/sessions/{SESSION_ID}/metadata"))
        show(client.get(f"/sessions/{SESSION_ID}/feedback"))

        print("\nRequests the API refuses:")
        show(client.post("/chat", json={"prompt": "   "}))
        show(client.post("/chat", json={"prompt": "x" * (MAX_PROMPT_CHARS + 1)}))
        show(client.get("/sessions/no-such-session/metadata"))
        show(client.patch(f"/sessions/{SESSION_ID}/metadata", json={"$where": "1"}))


def main() -> None:
    parser = argparse.ArgumentParser(description="FastAPI chat example for mongodb-session-manager.")
    parser.add_argument("--serve", action="store_true", help="keep serving instead of making demo requests")
    args = parser.parse_args()
    port = int(os.environ.get("PORT", "8000"))
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
