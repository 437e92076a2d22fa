"""Streaming chat backend for the playground: FastAPI over one process-wide session manager factory.

Endpoints (JSON unless noted):

* ``POST /sessions``: start a conversation; ``201 {"session_id": ...}``.
* ``GET /sessions/{session_id}``: the stored conversation as a simple role/text list, its title, the
  facts the agent keeps about the user, per-turn metrics (tokens, latency) and feedback.
* ``POST /chat/{session_id}/stream`` with ``{"prompt": "..."}``: the reply as server-sent events,
  ``token`` (``{"text"}``, one per streamed piece), ``tool`` (a tool call or its result), then
  ``done`` (the turn's stored metrics) or ``error`` (``{"detail"}``).
* ``POST /sessions/{session_id}/feedback`` with ``{"rating": "up" | "down" | null, "comment": "..."}``.

Bad input is answered before anything is stored: ``404`` unknown session, ``422`` empty or malformed
prompt or feedback, ``413`` prompt over the limit, ``409`` a reply for that session is still streaming.

Session metadata holds two kinds of keys. Keys starting with ``_`` are the backend's bookkeeping
(``_client`` tags playground sessions for ``list_sessions(metadata_filter=PLAYGROUND_SESSIONS)``,
``_title`` is the first prompt); every other key is a fact about the user, which the agent reads and
writes through its ``manage_metadata`` tool. That tool never shows nor changes bookkeeping.

A turn runs in its own task. If the client goes away mid-turn, the agent is cancelled at its next
safe point and the turn is ended in storage (tool uses answered, an assistant message saying the
answer was interrupted), so the stored conversation stays one that Bedrock's Converse API accepts.

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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from strands import Agent, tool
from strands.models.model import Model
from strands.types.content import ContentBlock, Message
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

#: Metadata keys starting with this are the backend's bookkeeping: the agent's tool neither shows nor changes them.
BOOKKEEPING_PREFIX = "_"
#: Every playground session carries this: ``list_sessions(metadata_filter=PLAYGROUND_SESSIONS)`` lists them.
PLAYGROUND_SESSIONS = {"_client": "chat playground"}
#: The session's title (its first prompt, shortened).
TITLE_KEY = "_title"

#: The assistant message that ends a turn whose client went away before the answer was complete.
INTERRUPTED = "(The answer was interrupted before it was complete.)"
#: The assistant message that ends a turn that failed (the error itself goes to the client and the log).
FAILED = "(No answer: the turn failed.)"
#: The result stored for a tool use that a cut-off turn never ran.
NOT_RUN = "Not run: the turn was interrupted."

#: Returns the model for one turn: a Strands model, a Bedrock model id, or ``None`` (Strands' default).
ModelFactory = Callable[[], Model | str | None]


class ChatRequest(BaseModel):
    """Body of ``POST /chat/{session_id}/stream``."""

    prompt: str


class FeedbackRequest(BaseModel):
    """Body of ``POST /sessions/{session_id}/feedback``."""

    rating: Literal["up", "down"] | None = None
    comment: str = ""


class _SessionTurns:
    """Per session: the lock that runs its turns one at a time, and how many clients are receiving a reply."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.listeners = 0


class _Turn:
    """One prompt's turn. It runs in a task of its own; the response only relays its events."""

    def __init__(self, session_id: str, prompt: str) -> None:
        self.session_id = session_id
        self.prompt = prompt
        self.events: asyncio.Queue[str | None] = asyncio.Queue()
        self.agent: Agent | None = None  # while the agent is running the turn
        self.abandoned = False

    def emit(self, event: str, data: Any) -> None:
        if not self.abandoned:
            self.events.put_nowait(sse(event, data))

    def abandon(self) -> None:
        """The client went away: stop the agent at its next safe point, ending the turn with :data:`INTERRUPTED`."""
        self.abandoned = True
        if self.agent is not None:
            self.agent.cancel(message=INTERRUPTED)


def create_app(
    connection_string: str,
    database_name: str = "playground",
    model_factory: ModelFactory = demo_model,
    *,
    collection_name: str = DEFAULT_COLLECTION_NAME,
    allowed_origins: Sequence[str] = DEFAULT_ALLOWED_ORIGINS,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    tools: Sequence[Any] = (calculator,),
) -> FastAPI:
    """Build the playground API.

    The global session manager factory (one connection pool for the process) is initialised when
    the app starts and closed when it stops (after the turns still running have ended).

    Args:
        connection_string: MongoDB connection string.
        database_name: Database holding the playground's sessions.
        model_factory: Returns the model for a turn: a Strands model, a Bedrock model id, or
            ``None`` (Strands' default Bedrock model).
        collection_name: Collection holding one document per session.
        allowed_origins: Origins allowed by CORS (the frontend's).
        max_prompt_chars: Longer prompts are refused with ``413``.
        tools: The agent's tools besides its ``manage_metadata`` tool (default: the calculator).

    Returns:
        The FastAPI application.
    """
    # Turns of one session run one at a time; a second prompt while a client receives a reply is
    # refused (409). Entries vanish with the last request or turn that holds them.
    session_turns: weakref.WeakValueDictionary[str, _SessionTurns] = weakref.WeakValueDictionary()
    running: set[asyncio.Task[None]] = set()  # turns, which may outlive their request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        factory = initialize_global_factory(connection_string, database_name, collection_name)
        # For existence checks: a manager cannot do them, it creates the session it is given.
        app.state.sessions = factory.repository  # reads that must not create a session (404s)
        try:
            yield
        finally:
            if running:  # let them end (and store their ending) before the connection pool goes
                await asyncio.wait(set(running), timeout=30)
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
            tools=[*tools, user_facts_tool(manager)],
            system_prompt=SYSTEM_PROMPT,
            session_manager=manager,
            callback_handler=None,
        )
        return manager, agent

    @app.post("/sessions", status_code=201)
    def new_session() -> dict[str, str]:
        session_id = uuid.uuid4().hex
        manager = get_global_factory().create_session_manager(session_id)  # creates the session
        manager.update_metadata(dict(PLAYGROUND_SESSIONS))
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
        tool_names: dict[str, str] = {}
        for entry in stored:
            for item in display_items(entry.message, tool_names):
                item["message_id"] = entry.message_id
                if item["role"] == "assistant" and entry.message_id in metrics:
                    item["turn"] = turn_summary(entry.message_id, metrics[entry.message_id])
                messages.append(item)
        turns = [turn_summary(message_id, m) for message_id, m in sorted(metrics.items())]
        metadata = manager.get_metadata()
        view = {
            "session_id": session_id,
            "created_at": manager.session.created_at,
            "title": metadata.get(TITLE_KEY),
            "messages": messages,
            "turns": turns,
            "totals": totals(len(stored), turns),
            "metadata": user_facts(metadata),
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
        busy = session_turns.get(session_id)
        if busy is not None and busy.listeners:
            raise HTTPException(409, "a reply for this session is still streaming")
        return StreamingResponse(
            turn_events(session_id, prompt),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def turn_events(session_id: str, prompt: str) -> AsyncIterator[str]:
        # Counted here, not in the endpoint: a stream that never starts holds nothing.
        state = session_turns.setdefault(session_id, _SessionTurns())
        state.listeners += 1
        turn = _Turn(session_id, prompt)
        task = asyncio.create_task(run_turn(turn, state))
        running.add(task)
        task.add_done_callback(running.discard)
        relayed = False
        try:
            while (event := await turn.events.get()) is not None:
                yield event
            relayed = True
        finally:
            # Also reached when the client goes away (the response is cancelled, or this generator
            # closed): then the agent is stopped, and the turn ended in storage, by its own task.
            state.listeners -= 1
            if not relayed:
                logger.info("session_id=<%s> | client went away mid-turn, interrupting the turn", session_id)
                turn.abandon()

    async def run_turn(turn: _Turn, state: _SessionTurns) -> None:
        # A turn whose client went away while it waited for the lock never starts: nothing is stored.
        async with state.lock:
            try:
                if not turn.abandoned:
                    manager, agent = await run_in_threadpool(build_agent, turn.session_id)
                    await play(turn, manager, agent)
            except Exception as e:
                # The response has started (200): errors can only be reported in the stream.
                logger.exception("session_id=<%s> | chat turn failed", turn.session_id)
                turn.emit("error", {"detail": f"{type(e).__name__}: {e}"[:300]})
            finally:
                turn.events.put_nowait(None)

    async def play(turn: _Turn, manager: MongoDBSessionManager, agent: Agent) -> None:
        # A turn left unfinished by a backend that stopped mid-turn is ended before this one starts
        # (this process runs one turn of a session at a time; it assumes no other process does too).
        await run_in_threadpool(end_unfinished_turn, manager, agent, INTERRUPTED)
        first_turn = not agent.messages
        if turn.abandoned:
            return
        ending = INTERRUPTED
        try:
            turn.agent = agent
            tool_names: dict[str, str] = {}
            async for event in agent.stream_async(turn.prompt):
                if "data" in event:
                    turn.emit("token", {"text": event["data"]})
                elif "message" in event:
                    for item in display_items(event["message"], tool_names):
                        if item["role"] == "tool":  # text was streamed already
                            turn.emit("tool", item)
            turn.agent = None
            if not turn.abandoned:
                stored = await run_in_threadpool(manager.get_message_metrics, AGENT_ID)
                last = stored[-1]
                turn.emit("done", turn_summary(last["message_id"], last["event_loop_metrics"]))
        except Exception:
            ending = FAILED
            raise
        finally:
            turn.agent = None
            # Whatever happened, leave a conversation the next turn can send: after a failure
            # Strands keeps the unanswered prompt; a cancellation may end on tool results.
            try:
                await run_in_threadpool(end_unfinished_turn, manager, agent, ending)
                if first_turn and agent.messages:
                    await run_in_threadpool(manager.update_metadata, {TITLE_KEY: turn.prompt[:80]})
            except Exception:
                logger.exception("session_id=<%s> | could not end the turn in storage", turn.session_id)

    return app


# ------------------------------------------------------------------------------ conversation


def turn_ending(messages: Sequence[Message], text: str) -> list[Message]:
    """The messages that end an unfinished last turn: ``[]`` when it ended with an assistant answer.

    Tool uses of a final assistant message get error results (:data:`NOT_RUN`), then an assistant
    message says ``text``. A conversation ending this way is one Bedrock's Converse API accepts
    before the next user message: roles alternate and every tool use has its result.
    """
    if not messages:
        return []
    last = messages[-1]
    ending: list[Message] = []
    if last["role"] == "assistant":
        unanswered = [block["toolUse"]["toolUseId"] for block in last["content"] if "toolUse" in block]
        if not unanswered:
            return []
        results: list[ContentBlock] = [
            {"toolResult": {"toolUseId": tool_use_id, "status": "error", "content": [{"text": NOT_RUN}]}}
            for tool_use_id in unanswered
        ]
        ending.append(Message(role="user", content=results))
    ending.append(Message(role="assistant", content=[{"text": text}]))
    return ending


def end_unfinished_turn(manager: MongoDBSessionManager, agent: Agent, text: str) -> None:
    """Store (and add to ``agent``) the messages that end its last turn, if it is unfinished."""
    for message in turn_ending(agent.messages, text):
        manager.append_message(message, agent)
        agent.messages.append(message)


# ------------------------------------------------------------------------------ metadata


def is_bookkeeping(key: str) -> bool:
    """Whether a metadata key is the backend's (``_client``, ``_title``) rather than a fact about the user."""
    return key.startswith(BOOKKEEPING_PREFIX)


def user_facts(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata without the backend's bookkeeping: what the agent knows about the user."""
    return {key: value for key, value in metadata.items() if not is_bookkeeping(key)}


def user_facts_tool(manager: MongoDBSessionManager) -> Any:
    """The session's ``manage_metadata`` tool, restricted to facts about the user.

    ``get`` leaves the bookkeeping keys out; ``set`` and ``delete`` of one are refused with an error
    result, as the library's tool refuses bad arguments.
    """
    library_tool = manager.get_metadata_tool()

    @tool(name="manage_metadata")
    def manage_metadata(
        action: str, metadata: dict[str, Any] | str | None = None, keys: list[str] | str | None = None
    ) -> dict[str, Any]:
        """Read or change what you know about the user, kept in this conversation's metadata.

        Args:
            action: "get" to read all facts, "set" to add or change facts, "delete" to remove facts.
            metadata: For "set": an object of fact names to values, e.g. {"language": "en"}.
            keys: For "delete": the list of fact names to remove, e.g. ["language"].
        """
        named = _named_keys(metadata) if action == "set" else _named_keys(keys) if action == "delete" else []
        reserved = sorted(key for key in named if is_bookkeeping(key))
        if reserved:
            detail = f"{', '.join(reserved)}: names starting with {BOOKKEEPING_PREFIX!r} are reserved"
            return {"status": "error", "content": [{"text": json.dumps({"error": detail})}]}
        result: dict[str, Any] = library_tool(action=action, metadata=metadata, keys=keys)
        if action == "get" and result.get("status") == "success":
            payload = json.loads(result["content"][0]["text"])
            payload["metadata"] = user_facts(payload.get("metadata") or {})
            result = {**result, "content": [{"text": json.dumps(payload, ensure_ascii=False)}]}
        return result

    return manage_metadata


def _named_keys(value: Any) -> list[str]:
    """The metadata keys a ``set`` (object) or ``delete`` (list or one name) argument names, JSON strings included."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict | list):
        return [key for key in value if isinstance(key, str)]
    return []


# ------------------------------------------------------------------------------ display


#: How much a tool result may hold to be shown as a value or a table rather than as collapsed JSON.
SMALL_ROWS = 20
SMALL_COLUMNS = 8
SHORT_TEXT = 300
#: Prefixes some tools put before their value ("Result: 84").
RESULT_PREFIXES = {"calculator": "Result:"}


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def display_items(message: Message | dict[str, Any], tool_names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A stored or streamed Strands message as what the page shows: text, tool calls, tool results.

    Args:
        message: The message.
        tool_names: Tool names by tool use id, filled from tool uses (pass the same dict for the
            messages of one conversation, so that a result is shown with its tool's name).

    Returns:
        ``{"role", "text"}`` for text; ``{"role": "tool", "kind": "call", "tool", "text"}`` for a
        tool use; ``{"role": "tool", "kind": "result", "tool", "status", "text", "view"}`` for a
        tool result, ``view`` as :func:`result_view` returns it and ``text`` a one-line rendering.
    """
    names = {} if tool_names is None else tool_names
    content = message.get("content") or []
    items: list[dict[str, Any]] = []
    text = "".join(block["text"] for block in content if "text" in block).strip()
    if text:
        items.append({"role": message.get("role"), "text": text})
    for block in content:
        if "toolUse" in block:
            use = block["toolUse"]
            name = str(use.get("name", "tool"))
            names[str(use.get("toolUseId"))] = name
            args = ", ".join(f"{key}={json.dumps(value)}" for key, value in (use.get("input") or {}).items())
            items.append({"role": "tool", "kind": "call", "tool": name, "text": f"{name}({args})"})
        elif "toolResult" in block:
            result = block["toolResult"]
            name = names.get(str(result.get("toolUseId")), "tool")
            view = result_view(name, result)
            items.append(
                {
                    "role": "tool",
                    "kind": "result",
                    "tool": name,
                    "status": result.get("status", "success"),
                    "text": "→ " + view_text(view),
                    "view": view,
                }
            )
    return items


def result_view(tool_name: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """How to show a tool result: its value, read from its content blocks, as :func:`value_view` says."""
    parts = [_block_value(tool_name, block) for block in result.get("content") or []]
    if len(parts) == 1:
        value = parts[0]
    elif all(isinstance(part, str) for part in parts):
        value = "\n".join(parts)
    else:
        value = parts
    return value_view(value)


def _block_value(tool_name: str, block: Mapping[str, Any]) -> Any:
    if "json" in block:
        return block["json"]
    if "text" not in block:
        return f"<{next(iter(block), 'content')}>"  # an image, a document...
    text = str(block["text"]).strip()
    prefix = RESULT_PREFIXES.get(tool_name)
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :].strip()
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def value_view(value: Any, label: str | None = None) -> dict[str, Any]:
    """How the page shows a value: the readable form that fits, else collapsed pretty JSON.

    * ``{"type": "value", "label", "value"}``: a plain value (a short text, a number, a short list
      of them), shown as text;
    * ``{"type": "table", "label", "columns", "rows"}``: a small list of flat records (one row
      each) or one flat object (a field/value row per key);
    * ``{"type": "details", "label", "summary", "text"}``: anything else, collapsed: the summary
      shows, the pretty JSON (or long text) opens on a click.

    An object with a single key is shown as that key (the label) and its value.
    """
    if isinstance(value, dict) and len(value) == 1 and label is None:
        ((key, inner),) = value.items()
        return value_view(inner, str(key))
    if value in ("", [], {}):
        return {"type": "value", "label": label, "value": "(empty)"}
    if _is_scalar(value):
        text = _scalar(value)
        if _short(text):
            return {"type": "value", "label": label, "value": text}
        first = text.strip().splitlines()[0]
        summary = first if len(first) <= 80 else first[:79] + "…"
        return {"type": "details", "label": label, "summary": summary, "text": text}
    if isinstance(value, list) and all(_is_scalar(item) for item in value):
        text = ", ".join(_scalar(item) for item in value)
        if len(value) <= SMALL_ROWS and _short(text):
            return {"type": "value", "label": label, "value": text}
    if isinstance(value, dict) and _small_record(value, SMALL_ROWS):
        rows = [[str(key), _scalar(item)] for key, item in value.items()]
        return {"type": "table", "label": label, "columns": ["field", "value"], "rows": rows}
    if isinstance(value, list) and len(value) <= SMALL_ROWS and all(_small_record(row) for row in value):
        columns = list(dict.fromkeys(str(key) for row in value for key in row))
        if len(columns) <= SMALL_COLUMNS:
            rows = [[_scalar(row[key]) if key in row else "" for key in columns] for row in value]
            return {"type": "table", "label": label, "columns": columns, "rows": rows}
    if isinstance(value, dict):
        summary = f"object with {len(value)} field{'s' if len(value) != 1 else ''}"
    else:
        summary = f"list of {len(value)} item{'s' if len(value) != 1 else ''}"
    pretty = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return {"type": "details", "label": label, "summary": summary, "text": pretty}


def view_text(view: dict[str, Any]) -> str:
    """A one-line plain-text rendering of a :func:`value_view` result."""
    if view["type"] == "value":
        body = view["value"]
    elif view["type"] == "table":
        columns = view["columns"]
        if columns == ["field", "value"]:
            body = ", ".join(f"{key}: {value}" for key, value in view["rows"])
        else:
            body = "; ".join(", ".join(f"{c}={v}" for c, v in zip(columns, row, strict=True)) for row in view["rows"])
    else:
        body = view["summary"]
    return f"{view['label']}: {body}" if view.get("label") else body


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _short(text: str) -> bool:
    return len(text) <= SHORT_TEXT and text.count("\n") < 4


def _small_record(value: Any, max_fields: int = SMALL_COLUMNS) -> bool:
    return (
        isinstance(value, dict)
        and 0 < len(value) <= max_fields
        and all(_is_scalar(item) and _short(_scalar(item)) for item in value.values())
    )


# ------------------------------------------------------------------------------ metrics


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
