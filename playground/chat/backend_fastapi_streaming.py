"""Streaming chat backend for the playground: FastAPI over one process-wide session manager factory.

Endpoints (JSON unless noted):

* ``POST /sessions``: start a conversation; ``201 {"session_id": ...}``.
* ``GET /sessions/{session_id}``: the stored conversation as a simple role/text list, its metadata,
  per-turn metrics (tokens, latency) and feedback.
* ``POST /chat/{session_id}/stream`` with ``{"prompt": "..."}``: the reply as server-sent events,
  ``token`` (``{"text"}``, one per streamed piece), ``tool`` (a tool call or its result), then
  ``done`` (the turn's stored metrics) or ``error`` (``{"detail"}``).
* ``POST /sessions/{session_id}/feedback`` with ``{"rating": "up" | "down" | null, "comment": "..."}``.

Bad input is answered before anything is stored: ``404`` unknown session, ``422`` empty or malformed
prompt or feedback, ``413`` prompt over the limit, ``409`` a reply for that session is still streaming.

Run it with ``make backend-fastapi-streaming`` (port 8880). Storage is ``MONGODB_URI`` or the embedded
local server of ``examples/_local.py``; the model is the offline demo model unless
``STRANDS_MODEL=bedrock`` (see ``examples/_local.py``). Settings: ``PLAYGROUND_HOST``,
``PLAYGROUND_PORT``, ``PLAYGROUND_DATABASE``, ``PLAYGROUND_ALLOWED_ORIGINS`` (comma-separated) and
``PLAYGROUND_TOKEN_DELAY`` (seconds between the offline model's words, so streaming is visible).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from strands import Agent
from strands.models.model import Model
from strands_tools import calculator

from mongodb_session_manager import (
    MongoDBSessionManager,
    SessionNotFoundError,
    SessionStorageError,
    SessionValidationError,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)
from mongodb_session_manager.mongodb_session_repository import DEFAULT_COLLECTION_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from _local import demo_model, describe_database, describe_model, mongodb_uri

logger = logging.getLogger(__name__)

AGENT_ID = "assistant"
MAX_PROMPT_CHARS = 8_000
DEFAULT_ALLOWED_ORIGINS = ("http://localhost:8881", "http://127.0.0.1:8881")
SYSTEM_PROMPT = (
    "You are a friendly, concise assistant. Use the calculator tool for arithmetic, and the manage_metadata "
    "tool to remember what the user tells you about themselves."
)

#: Returns the model for one turn: a Strands model, a Bedrock model id, or ``None`` (Strands' default).
ModelFactory = Callable[[], Model | str | None]


class ChatRequest(BaseModel):
    """Body of ``POST /chat/{session_id}/stream``."""

    prompt: str


class FeedbackRequest(BaseModel):
    """Body of ``POST /sessions/{session_id}/feedback``."""

    rating: Literal["up", "down"] | None = None
    comment: str = ""


def create_app(
    connection_string: str,
    database_name: str = "playground",
    model_factory: ModelFactory = demo_model,
    *,
    collection_name: str = DEFAULT_COLLECTION_NAME,
    allowed_origins: Sequence[str] = DEFAULT_ALLOWED_ORIGINS,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> FastAPI:
    """Build the playground API.

    The global session manager factory (one connection pool for the process) is initialised when
    the app starts and closed when it stops.

    Args:
        connection_string: MongoDB connection string.
        database_name: Database holding the playground's sessions.
        model_factory: Returns the model for a turn: a Strands model, a Bedrock model id, or
            ``None`` (Strands' default Bedrock model).
        collection_name: Collection holding one document per session.
        allowed_origins: Origins allowed by CORS (the frontend's).
        max_prompt_chars: Longer prompts are refused with ``413``.

    Returns:
        The FastAPI application.
    """
    # Turns of one session are serialised: a second prompt while a reply streams is refused (409).
    # Entries vanish with the last request that holds them.
    turn_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        factory = initialize_global_factory(connection_string, database_name, collection_name)
        # For existence checks: a manager cannot do them, it creates the session it is given.
        app.state.sessions = factory.repository  # reads that must not create a session (404s)
        try:
            yield
        finally:
            close_global_factory()

    app = FastAPI(title="mongodb-session-manager chat playground", lifespan=lifespan)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(allowed_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type"],
    )

    @app.exception_handler(SessionValidationError)
    async def invalid(request: Request, exc: SessionValidationError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(SessionNotFoundError)
    async def not_found(request: Request, exc: SessionNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": "unknown session"}, status_code=404)

    @app.exception_handler(SessionStorageError)
    async def storage_failed(request: Request, exc: SessionStorageError) -> JSONResponse:
        logger.warning("path=<%s> | storage failed: %s", request.url.path, exc)
        return JSONResponse({"detail": "the database is unavailable"}, status_code=503)

    def require_session(session_id: str) -> None:
        if app.state.sessions.read_session(session_id) is None:
            raise HTTPException(404, f"unknown session {session_id!r}")

    def existing_manager(session_id: str) -> MongoDBSessionManager:
        """A manager for a session that must already exist (a manager creates any session it is given)."""
        require_session(session_id)
        return get_global_factory().create_session_manager(session_id)

    def build_agent(session_id: str) -> tuple[MongoDBSessionManager, Agent]:
        manager = existing_manager(session_id)
        agent = Agent(
            agent_id=AGENT_ID,
            model=model_factory(),
            tools=[calculator, manager.get_metadata_tool()],
            system_prompt=SYSTEM_PROMPT,
            session_manager=manager,
            callback_handler=None,
        )
        return manager, agent

    @app.post("/sessions", status_code=201)
    def new_session() -> dict[str, str]:
        session_id = uuid.uuid4().hex
        manager = get_global_factory().create_session_manager(session_id)  # creates the session
        manager.update_metadata({"client": "chat playground"})
        return {"session_id": session_id}

    @app.get("/sessions/{session_id}")
    def session_view(session_id: str) -> Any:
        manager = existing_manager(session_id)
        try:
            stored = manager.mongodb_repository.list_messages(session_id, AGENT_ID)
            metrics = {turn["message_id"]: turn["event_loop_metrics"] for turn in manager.get_message_metrics(AGENT_ID)}
        except SessionNotFoundError:  # the session exists (checked above); its agent has not spoken yet
            stored, metrics = [], {}
        messages = []
        for entry in stored:
            for item in display_items(entry.message):
                item["message_id"] = entry.message_id
                if item["role"] == "assistant" and entry.message_id in metrics:
                    item["turn"] = turn_summary(entry.message_id, metrics[entry.message_id])
                messages.append(item)
        turns = [turn_summary(message_id, m) for message_id, m in sorted(metrics.items())]
        view = {
            "session_id": session_id,
            "created_at": manager.session.created_at,
            "messages": messages,
            "turns": turns,
            "totals": totals(len(stored), turns),
            "metadata": manager.get_metadata(),
            "feedbacks": manager.get_feedbacks(),
        }
        return jsonable_encoder(view, custom_encoder={bytes: lambda value: f"<{len(value)} bytes>"})

    @app.post("/sessions/{session_id}/feedback", status_code=201)
    def feedback(session_id: str, body: FeedbackRequest) -> Any:
        manager = existing_manager(session_id)
        entry = manager.add_feedback({"rating": body.rating, "comment": body.comment})
        return jsonable_encoder(entry)

    @app.post("/chat/{session_id}/stream")
    async def chat_stream(session_id: str, body: ChatRequest) -> StreamingResponse:
        prompt = body.prompt
        if not prompt.strip():
            raise HTTPException(422, "prompt must not be empty")
        if len(prompt) > max_prompt_chars:
            raise HTTPException(413, f"prompt is {len(prompt)} characters; the limit is {max_prompt_chars}")
        await run_in_threadpool(require_session, session_id)
        lock = turn_locks.setdefault(session_id, asyncio.Lock())
        if lock.locked():
            raise HTTPException(409, "a reply for this session is still streaming")
        return StreamingResponse(
            turn_events(session_id, prompt, lock),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def turn_events(session_id: str, prompt: str, lock: asyncio.Lock) -> AsyncIterator[str]:
        # The lock is taken here, not in the endpoint: a stream that never starts holds nothing.
        async with lock:
            try:
                manager, agent = await run_in_threadpool(build_agent, session_id)
                first_turn = not agent.messages
                async for event in agent.stream_async(prompt):
                    if "data" in event:
                        yield sse("token", {"text": event["data"]})
                    elif "message" in event:
                        for item in display_items(event["message"]):
                            if item["role"] == "tool":  # text was streamed already
                                yield sse("tool", item)
                if first_turn:
                    await run_in_threadpool(manager.update_metadata, {"title": prompt[:80]})
                stored = await run_in_threadpool(manager.get_message_metrics, AGENT_ID)
                last = stored[-1]
                yield sse("done", turn_summary(last["message_id"], last["event_loop_metrics"]))
            except Exception as e:
                # The response has started (200): errors can only be reported in the stream.
                logger.exception("session_id=<%s> | chat turn failed", session_id)
                yield sse("error", {"detail": f"{type(e).__name__}: {e}"[:300]})

    return app


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def display_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored or streamed Strands message as what the page shows: text, tool calls, tool results."""
    content = message.get("content") or []
    items: list[dict[str, Any]] = []
    text = "".join(block["text"] for block in content if "text" in block).strip()
    if text:
        items.append({"role": message.get("role"), "text": text})
    for block in content:
        if "toolUse" in block:
            use = block["toolUse"]
            args = ", ".join(f"{key}={json.dumps(value)}" for key, value in (use.get("input") or {}).items())
            items.append({"role": "tool", "text": f"{use.get('name')}({args})"})
        elif "toolResult" in block:
            result = " ".join(part.get("text", "") for part in block["toolResult"].get("content", []))
            items.append({"role": "tool", "text": f"→ {result.strip()}"})
    return items


def turn_summary(message_id: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures the page shows for one turn, from its stored ``event_loop_metrics``."""
    usage = metrics.get("usage") or {}
    return {
        "message_id": message_id,
        "input_tokens": usage.get("inputTokens", 0),
        "output_tokens": usage.get("outputTokens", 0),
        "total_tokens": usage.get("totalTokens", 0),
        "latency_ms": metrics.get("latency_ms", 0),
        "duration_ms": metrics.get("duration_ms", 0),
        "cycles": metrics.get("cycle_count", 0),
        "tools": {name: tool["call_count"] for name, tool in (metrics.get("tool_usage") or {}).items()},
    }


def totals(message_count: int, turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Session-wide figures for the statistics panel."""
    return {
        "messages": message_count,
        "turns": len(turns),
        "input_tokens": sum(turn["input_tokens"] for turn in turns),
        "output_tokens": sum(turn["output_tokens"] for turn in turns),
        "total_tokens": sum(turn["total_tokens"] for turn in turns),
        "latency_ms": sum(turn["latency_ms"] for turn in turns),
    }


def main() -> None:
    """Serve the playground API on port 8880 (``PLAYGROUND_PORT``)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    host = os.environ.get("PLAYGROUND_HOST", "127.0.0.1")
    port = int(os.environ.get("PLAYGROUND_PORT", "8880"))
    database = os.environ.get("PLAYGROUND_DATABASE", "playground")
    origins = [o.strip() for o in os.environ.get("PLAYGROUND_ALLOWED_ORIGINS", "").split(",") if o.strip()]
    model = demo_model(stream_delay=float(os.environ.get("PLAYGROUND_TOKEN_DELAY", "0.04")))
    with mongodb_uri() as uri:
        print(f"Storage: {describe_database(uri)}, database {database!r}")
        print(f"Model:   {describe_model()}")
        print(f"API:     http://{host}:{port}  (frontend: make frontend, then http://localhost:8881/chat.html)")
        app = create_app(uri, database, lambda: model, allowed_origins=origins or DEFAULT_ALLOWED_ORIGINS)
        uvicorn.run(app, host=host, port=port)


if __name__ == "__main__":
    main()
