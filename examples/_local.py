"""Defaults that let every example run anywhere, and stay the real thing when pointed at your own setup.

* Database: ``MONGODB_URI`` when set. Otherwise a local SecantusDB server (a MongoDB wire-protocol
  server installed with the project's dev dependencies) is started in this process, with its data
  in ``.data/mongodb`` under the project (or ``EXAMPLES_DATA_DIR``), so a second run finds the first
  run's sessions. Only one process can open that folder: an example started while another one holds
  it uses the other's server (its address is in ``.data/mongodb.server``) for as long as that one runs.
* Database name: ``EXAMPLES_DATABASE`` when set, else ``examples`` (``demo`` for ``make demo``).
* Model: ``STRANDS_MODEL=bedrock`` (or AWS credentials in the environment) uses Strands' default
  Bedrock model, or the Bedrock model named by ``STRANDS_MODEL_ID``; ``STRANDS_MODEL=offline`` (the
  default without AWS credentials) an offline demo model that says so. It answers arithmetic through
  the ``calculator`` tool of ``strands-agents-tools``, keeps notes through the ``manage_metadata`` tool ("my name is ...",
  "remember that my ... is ...", "what do you know about me?", "forget my ..."), and otherwise
  reflects what it was told. Persistence is always real.

Nothing here is needed in your own code: it only stands in for your MongoDB and your model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
import warnings
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from strands.models.model import Model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("EXAMPLES_DATA_DIR") or PROJECT_ROOT / ".data" / "mongodb").resolve()
# Written by the process that has DATA_DIR open: {"pid": ..., "uri": ...}.
SERVER_FILE = DATA_DIR.with_name(DATA_DIR.name + ".server")

_borrowed_from_pid: int | None = None


# ---------------------------------------------------------------------------------------- database


@contextlib.contextmanager
def mongodb_uri() -> Iterator[str]:
    """Yield a MongoDB connection string: ``MONGODB_URI``, or an embedded local server for the duration."""
    global _borrowed_from_pid
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    running = _running_server()
    if running is None:
        from secantus import SecantusDBServer  # dev dependency: only needed when no MONGODB_URI is given

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        try:
            server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(DATA_DIR), cache_size="256M")
        except Exception as e:  # WiredTiger: "Device or resource busy" when another process holds the folder
            running = _running_server(wait=20.0)  # it may be starting at this very moment
            if running is None:
                raise RuntimeError(
                    f"{DATA_DIR} is in use by another process that serves no MongoDB we can reach. "
                    "Stop it, or set MONGODB_URI to a MongoDB server."
                ) from e
    if running is not None:  # another example process has the folder open: use its server
        _borrowed_from_pid, uri = running
        yield uri
        return
    server.start()
    host, port = server.address[:2]
    uri = f"mongodb://{host}:{port}/?directConnection=true"
    SERVER_FILE.write_text(json.dumps({"pid": os.getpid(), "uri": uri}), encoding="utf-8")
    try:
        with _exit_on_sigterm():
            yield uri
    finally:
        with contextlib.suppress(OSError):
            SERVER_FILE.unlink()
        server.stop()


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` so the embedded server is stopped cleanly (as on Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _running_server(wait: float = 0.0) -> tuple[int, str] | None:
    """``(pid, uri)`` of the live example process that has ``DATA_DIR`` open, if any."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads(SERVER_FILE.read_text(encoding="utf-8"))
            pid, uri = int(info["pid"]), str(info["uri"])
            if pid != os.getpid() and _alive(pid):
                client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=2000)
                try:
                    client.admin.command("ping")
                    return pid, uri
                except PyMongoError:
                    pass
                finally:
                    client.close()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_database(uri: str) -> str:
    """A one-line, password-free description of where data goes."""
    if os.environ.get("MONGODB_URI"):
        from mongodb_session_manager._secrets import redact_uri

        return f"MongoDB at {redact_uri(uri)} (MONGODB_URI)"
    folder = DATA_DIR.relative_to(PROJECT_ROOT) if DATA_DIR.is_relative_to(PROJECT_ROOT) else DATA_DIR
    if _borrowed_from_pid is not None:
        return (
            f"embedded SecantusDB of process {_borrowed_from_pid} (keep it running until this ends), data in {folder}/"
        )
    return f"embedded SecantusDB, data in {folder}/"


def database_name(default: str = "examples") -> str:
    """The database the examples write to: ``EXAMPLES_DATABASE``, else ``default``."""
    return os.environ.get("EXAMPLES_DATABASE") or default


# ------------------------------------------------------------------------------------------- model


def use_bedrock() -> bool:
    """Whether to use a Bedrock model rather than the offline demo model."""
    choice = os.environ.get("STRANDS_MODEL", "").lower()
    if choice:
        return choice == "bedrock"
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"))


def demo_model(stream_delay: float = 0.0) -> Model | str | None:
    """The model for examples.

    ``None`` (Strands' default Bedrock model), a Bedrock model id from ``STRANDS_MODEL_ID``, or the
    offline demo model, which waits ``stream_delay`` seconds between words so streaming is visible.
    """
    if use_bedrock():
        return os.environ.get("STRANDS_MODEL_ID") or None
    return OfflineDemoModel(stream_delay=stream_delay)


def describe_model() -> str:
    """A one-line description of the model :func:`demo_model` returns."""
    if use_bedrock():
        model_id = os.environ.get("STRANDS_MODEL_ID")
        return f"Bedrock model {model_id}" if model_id else "Strands' default Bedrock model"
    return "offline demo model (no cloud account needed; STRANDS_MODEL=bedrock for a real one)"


# strands-agents-tools 0.8 deprecates its calculator (in favour of a shell tool, a very different
# security boundary) and says so at every call, as a DeprecationWarning and a WARNING log. The
# examples use it as the reference design does; keep their output to what they are about.
warnings.filterwarnings("ignore", message="calculator is deprecated", category=DeprecationWarning)
logging.getLogger("strands_tools.calculator").setLevel(logging.ERROR)


_ARITHMETIC = re.compile(r"[\d(][\d\s.()+\-*/%]*[\d)]")
# Phrases the offline model turns into manage_metadata calls.
_MY_X_IS = re.compile(r"\bmy ([a-z][a-z ]{0,30}?) is ([^.,;!?]+?)(?= and |[.,;!?]|$)", re.IGNORECASE)
_I_PREFER = re.compile(r"\bI prefer ([^.,;!?]+?)(?= and |[.,;!?]|$)", re.IGNORECASE)
_RECALL = re.compile(r"what do you (know|remember)|what(?:'s| is) my|who am i", re.IGNORECASE)
_FORGET = re.compile(r"\bforget (?:about )?(?:my )?([a-z][a-z ]{0,30}?)\s*[.!?]*$", re.IGNORECASE)


def _key(words: str) -> str:
    return re.sub(r"\W+", "_", words.strip().lower()).strip("_")


def metadata_request(said: str) -> dict[str, Any] | None:
    """The ``manage_metadata`` call the offline model makes for ``said``, if any."""
    if _RECALL.search(said):
        return {"action": "get"}
    forget = _FORGET.search(said)
    if forget:
        return {"action": "delete", "keys": [_key(forget.group(1))]}
    fields = {_key(m.group(1)): m.group(2).strip() for m in _MY_X_IS.finditer(said)}
    prefer = _I_PREFER.search(said)
    if prefer:
        fields["preference"] = prefer.group(1).strip()
    if fields:
        return {"action": "set", "metadata": fields}
    if said.lower().startswith("remember"):
        return {"action": "set", "metadata": {"note": re.sub(r"^remember( that)?\s*", "", said, flags=re.I)}}
    return None


class OfflineDemoModel(Model):
    """A tiny offline stand-in for a real model, so examples run without a cloud account.

    It calls the ``calculator`` tool when the user's message contains arithmetic and the
    ``manage_metadata`` tool when the user tells it something about themselves or asks what it knows,
    reports the tool's result, and otherwise answers with a short reflection of the message. Every
    answer starts with ``(offline demo model)`` so nobody mistakes it for a real model.

    Args:
        stream_delay: Seconds to wait between streamed words (0: as fast as possible).
    """

    def __init__(self, stream_delay: float = 0.0) -> None:
        self.config: dict[str, Any] = {"model_id": "offline-demo"}
        self.stream_delay = stream_delay

    def update_config(self, **model_config: Any) -> None:
        self.config.update(model_config)

    def get_config(self) -> dict[str, Any]:
        return self.config

    async def structured_output(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise NotImplementedError("the offline demo model does not do structured output")
        yield  # pragma: no cover

    def _use(self, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
        # Unique across model instances: a restored conversation already holds earlier calls' ids.
        return {"toolUse": {"toolUseId": f"demo-{uuid.uuid4().hex[:12]}", "name": name, "input": tool_input}}

    def _reply(self, messages: list[Any], tool_names: set[str]) -> dict[str, Any]:
        last = messages[-1] if messages else {"content": []}
        for block in last.get("content", []):
            if "toolResult" in block:
                return {"text": "(offline demo model) " + _report(messages, block["toolResult"])}
        said = " ".join(block["text"] for block in last.get("content", []) if "text" in block).strip()
        request = metadata_request(said) if "manage_metadata" in tool_names else None
        if request is not None:
            return self._use("manage_metadata", request)
        match = _ARITHMETIC.search(said)
        if match and "calculator" in tool_names and any(op in match.group() for op in "+-*/%"):
            return self._use("calculator", {"expression": match.group().strip()})
        asked = [text_of(m) for m in messages if m["role"] == "user" and any("text" in b for b in m["content"])]
        earlier = f" Before that you said: {asked[-2]!r}." if len(asked) > 1 else ""
        return {
            "text": f"(offline demo model) You said: {said!r}.{earlier} "
            f"This conversation has {len(asked)} user message(s) so far."
        }

    async def stream(
        self, messages: list[Any], tool_specs: list[Any] | None = None, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        tool_names = {spec["name"] for spec in tool_specs or []}
        block = self._reply(messages, tool_names)
        prompt_chars = sum(len(json.dumps(m.get("content", []), default=str)) for m in messages)
        yield {"messageStart": {"role": "assistant"}}
        if "toolUse" in block:
            use = block["toolUse"]
            yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}}
            yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(use["input"])}}}}
            out_chars, stop = len(json.dumps(use)), "tool_use"
        else:
            words = block["text"].split(" ")
            yield {"contentBlockStart": {"start": {}}}
            for i, word in enumerate(words):
                if self.stream_delay and i:
                    await asyncio.sleep(self.stream_delay)
                yield {"contentBlockDelta": {"delta": {"text": word if i == 0 else " " + word}}}
            out_chars, stop = len(block["text"]), "end_turn"
        yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": stop}}
        input_tokens, output_tokens = max(1, prompt_chars // 4), max(1, out_chars // 4)
        yield {
            "metadata": {
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens,
                },
                "metrics": {"latencyMs": 5},
            }
        }


def _report(messages: list[Any], result: dict[str, Any]) -> str:
    """What the offline model says about a tool's result."""
    text = " ".join(item.get("text", "") for item in result.get("content", []))
    name = next(
        (
            block["toolUse"]["name"]
            for message in reversed(messages)
            for block in message.get("content", [])
            if "toolUse" in block and block["toolUse"]["toolUseId"] == result.get("toolUseId")
        ),
        "tool",
    )
    if name == "calculator":
        return f"The calculator says: {text.removeprefix('Result: ')}."
    if name != "manage_metadata":
        return f"The {name} tool says: {text}."
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        payload = {"error": text}
    if not isinstance(payload, dict):
        payload = {"error": text}
    if "error" in payload:
        return f"The metadata tool refused: {payload['error']}"
    if "updated" in payload:
        return f"Noted in this session's metadata: {', '.join(payload['updated'])}."
    if "deleted" in payload:
        return f"Forgotten: {', '.join(payload['deleted'])}."
    known = payload.get("metadata") or {}
    if not known:
        return "This session's metadata is empty: I know nothing about you yet."
    return "From this session's metadata I know: " + ", ".join(f"{k} = {v!r}" for k, v in sorted(known.items())) + "."


# ---------------------------------------------------------------------------------------- printing


def print_setup(uri: str, collection: str) -> None:
    """Print where the example stores its sessions and which model it talks to."""
    print(f"Storage: {describe_database(uri)}, database {database_name()!r}, collection {collection!r}")
    print(f"Model:   {describe_model()}")


def summarize(message: Any, width: int = 90) -> str:
    """One line for a stored message: its role and each content block, shortened."""
    parts = []
    for block in message.get("content", []):
        if "text" in block:
            parts.append(repr(block["text"]))
        elif "toolUse" in block:
            parts.append(f"toolUse {block['toolUse']['name']}({json.dumps(block['toolUse']['input'])})")
        elif "toolResult" in block:
            text = " ".join(item.get("text", "") for item in block["toolResult"]["content"])
            parts.append(f"toolResult {block['toolResult']['status']}: {text}")
        else:
            parts.append(f"<{', '.join(block)}>")
    line = f"{message.get('role', '?'):9} " + " | ".join(parts)
    return line if len(line) <= width else line[: width - 3] + "..."


def print_messages(manager: Any, agent_id: str, offset: int = 0) -> None:
    """Print the agent's messages as stored in MongoDB (read back, not from memory)."""
    stored = manager.mongodb_repository.list_messages(manager.session_id, agent_id, offset=offset)
    for entry in stored:
        print(f"  #{entry.message_id:<3} {summarize(entry.message)}")


def print_metrics(manager: Any, agent_id: str | None = None, last: int | None = None) -> None:
    """Print the stored per-turn metrics (the final assistant message of each turn carries them)."""
    turns = manager.get_message_metrics(agent_id)
    for turn in turns[-last:] if last else turns:
        print("  " + format_metrics(turn["message_id"], turn["event_loop_metrics"]))


def format_metrics(message_id: int, m: dict[str, Any]) -> str:
    """One line for one turn's ``event_loop_metrics``."""
    tools = ", ".join(f"{name} x{t['call_count']}" for name, t in m["tool_usage"].items()) or "no tools"
    return (
        f"message {message_id:>3}: {m['usage']['totalTokens']:>5} tokens "
        f"(in {m['usage']['inputTokens']}, out {m['usage']['outputTokens']}), "
        f"{m['cycle_count']} cycle(s), model latency {m['latency_ms']} ms, {tools}"
    )


def text_of(message: Any) -> str:
    """The text blocks of a message, joined."""
    return " ".join(block.get("text", "") for block in message.get("content", [])).strip()


# ---------------------------------------------------------------------------------------- web apps


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int = 0, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread; yield its base URL, stop it on exit.

    ``port=0`` picks a free port. The app's lifespan runs as it would under ``uvicorn app:app``.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the web server did not start on {host}:{port} (see the log above)")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
