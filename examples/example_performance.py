"""What a session costs: MongoDB commands, bytes and time for each thing an agent does.

    uv run python examples/example_performance.py

Uses MONGODB_URI if set, otherwise an embedded local server (see examples/_local.py); the model is
always the offline demo model, so nothing leaves the machine. Everything is stored in a throwaway
database that is dropped at the end. Commands and bytes are counted with pymongo's own monitoring
(a ``CommandListener``), the way you would check them in your application. For the full suite with
baselines, run ``make bench`` (results in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bson
from _local import OfflineDemoModel, describe_database, mongodb_uri
from pymongo import MongoClient, monitoring
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.types.content import ContentBlock
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionRepository,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)

WINDOW = 20


class CommandCounter(monitoring.CommandListener, monitoring.ConnectionPoolListener):
    """Counts the commands a client sends, the bytes they carry both ways, and new connections."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.names: list[str] = []
            self.sent = self.received = self.connections = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self.lock:
            self.names.append(event.command_name)
            self.sent += len(bson.encode(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self.lock:
            self.received += len(bson.encode(event.reply))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        with self.lock:
            self.connections += 1

    # The other connection-pool events are not needed here.
    def pool_created(self, event: Any) -> None: ...
    def pool_ready(self, event: Any) -> None: ...
    def pool_cleared(self, event: Any) -> None: ...
    def pool_closed(self, event: Any) -> None: ...
    def connection_ready(self, event: Any) -> None: ...
    def connection_closed(self, event: Any) -> None: ...
    def connection_check_out_started(self, event: Any) -> None: ...
    def connection_check_out_failed(self, event: Any) -> None: ...
    def connection_checked_out(self, event: Any) -> None: ...
    def connection_checked_in(self, event: Any) -> None: ...

    def summary(self) -> str:
        if not self.names:
            return "0 commands"
        return f"{len(self.names)} command(s) ({', '.join(self.names)}), {kb(self.sent)} sent, {kb(self.received)} received"


def kb(size: float) -> str:
    return f"{size / 1024:,.1f} KB"


def median_ms(action: Callable[..., Any], *args: Any, times: int = 7) -> float:
    """Median wall-clock time of ``action(*args)`` over ``times`` calls, in milliseconds."""
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        action(*args)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def new_agent(manager: MongoDBSessionManager | None) -> Agent:
    """The agent of every request here: offline model, a sliding window of 20 messages."""
    return Agent(
        model=OfflineDemoModel(),
        session_manager=manager,
        conversation_manager=SlidingWindowConversationManager(window_size=WINDOW),
        callback_handler=None,
    )


def store_long_conversation(repository: MongoDBSessionRepository, session_id: str, count: int) -> None:
    """Store ``count`` messages at once, as an agent with a window of 20 would have left them.

    A shortcut for this example, not something to copy: appending thousands of messages one by one
    takes a while on the embedded test server, so the session document is inserted whole, built
    with the library's internal document helpers.
    """
    from mongodb_session_manager._documents import agent_to_fields, message_to_entry, session_to_document

    agent = SessionAgent.from_agent(new_agent(None))
    agent.conversation_manager_state["removed_message_count"] = max(0, count - WINDOW)
    messages = [
        SessionMessage({"role": "user" if i % 2 == 0 else "assistant", "content": [{"text": f"message {i} " * 40}]}, i)
        for i in range(count)
    ]
    document = session_to_document(Session(session_id=session_id, session_type=SessionType.AGENT))
    document["agents"]["default"] = {
        **agent_to_fields(agent),
        "message_count": count,
        "messages": [message_to_entry(m) for m in messages],
    }
    repository.collection.insert_one(document)


def main() -> None:
    with mongodb_uri() as uri:
        print(f"Storage: {describe_database(uri)}; model: offline demo model\n")
        # A throwaway database (EXAMPLES_DATABASE when the examples' test run names one), dropped at the end.
        database = os.environ.get("EXAMPLES_DATABASE") or f"perf_example_{uuid.uuid4().hex[:8]}"
        counter = CommandCounter()
        client: MongoClient[dict[str, Any]] = MongoClient(uri, event_listeners=[counter])
        try:
            run(uri, client, database, counter)
        finally:
            client.drop_database(database)
            client.close()


def run(uri: str, client: MongoClient[dict[str, Any]], database: str, counter: CommandCounter) -> None:
    repository = MongoDBSessionRepository(client=client, database_name=database)

    def open_session(session_id: str) -> MongoDBSessionManager:
        return MongoDBSessionManager(session_id, client=client, database_name=database)

    def restore(session_id: str) -> Agent:
        return new_agent(open_session(session_id))

    print("1. Restoring an agent (a new manager for an existing session, then Agent(...))")
    for count in (10, 2000):
        session_id = f"history-{count}"
        store_long_conversation(repository, session_id, count)
        counter.reset()
        agent = restore(session_id)
        summary = counter.summary()
        elapsed = median_ms(restore, session_id)
        print(f"   {count:>5,} stored messages -> {len(agent.messages)} restored: {summary}, {elapsed:.1f} ms")
    print("   The window is read, not the history: 2,000 stored messages cost what 10 do.\n")

    print("2. One turn: your message and the agent's reply (with its metrics)")
    chat = open_session("turn")
    agent = new_agent(chat)
    agent("Hello!")
    counter.reset()
    start = time.perf_counter()
    agent("How much does this cost?")
    elapsed = (time.perf_counter() - start) * 1000
    print(f"   {counter.summary()}, {elapsed:.1f} ms: one write per message, no reads.")
    counter.reset()
    chat.sync_agent(agent)
    print(f"   Saving the agent again with nothing changed: {counter.summary()}.\n")

    print("3. Appending as the conversation grows (one append, straight through the repository)")
    for count in (10, 2000):
        counter.reset()
        message = SessionMessage({"role": "user", "content": [{"text": "one more message " * 20}]}, count)
        start = time.perf_counter()
        repository.create_message(f"history-{count}", "default", message)
        elapsed = (time.perf_counter() - start) * 1000
        print(f"   after {count:>5,} messages: {counter.summary()}, {elapsed:.1f} ms")
    print("   Same command, same size, whatever the history. (The test server's own update time grows")
    print("   with the size of the document; what travels does not.)\n")

    print("4. A binary content block (an image in the prompt)")
    image = bytes(range(256)) * 1024
    block: ContentBlock = {"image": {"format": "png", "source": {"bytes": image}}}
    counter.reset()
    prompt: list[ContentBlock] = [{"text": "What is this?"}, block]
    new_agent(open_session("image"))(prompt)
    stored = client[database]["sessions"].find_one(
        {"_id": "image"}, {"agents.default.messages": {"$slice": 1}, "agents.default.message_count": 1}
    )
    assert stored is not None
    entry_size = len(bson.encode(stored["agents"]["default"]["messages"][0]))
    as_json = len(json.dumps(SessionMessage({"role": "user", "content": [block]}, 0).to_dict()))
    print(f"   a {kb(len(image))} image is stored in {kb(entry_size)} (BSON Binary);")
    print(f"   base64 inside JSON (Strands' FileSessionManager) would take {kb(as_json)}.\n")

    print("5. A manager per request: a new MongoClient each time vs the global factory")
    store_long_conversation(repository, "request", 10)

    def new_client() -> MongoDBSessionManager:
        own: MongoClient[dict[str, Any]] = MongoClient(uri, event_listeners=[counter])
        return MongoDBSessionManager("request", client=own, database_name=database)

    def from_factory() -> MongoDBSessionManager:
        return get_global_factory().create_session_manager("request")

    initialize_global_factory(uri, database_name=database, event_listeners=[counter])
    try:
        new_agent(from_factory())("Hi")  # warm-up: the pool opens its first connection here
        designs = {"new MongoClient": new_client, "global factory": from_factory}
        setup: dict[str, list[float]] = {label: [] for label in designs}
        connections = dict.fromkeys(designs, 0)
        for _ in range(9):
            for label, build in designs.items():  # taking turns, so a busy moment hits both alike
                counter.reset()
                start = time.perf_counter()
                manager = build()
                agent = new_agent(manager)
                setup[label].append((time.perf_counter() - start) * 1000)
                agent("Hi again")
                connections[label] += counter.connections
                if label == "new MongoClient":
                    manager.mongodb_repository.client.close()
        for label in designs:
            print(
                f"   {label:<16} {statistics.median(setup[label]):6.1f} ms to get the manager and restore the agent,"
                f" {connections[label] / 9:.0f} new connection(s) per request"
            )
    finally:
        close_global_factory()
    print("   Over a network with TLS and authentication, each new client costs several round trips more.\n")

    print("6. Many threads, one pool (global factory): 4 threads x 10 sessions x 2 turns")
    initialize_global_factory(uri, database_name=database)
    try:

        def worker(thread: int) -> None:
            for _ in range(2):
                for session in range(10):
                    factory = get_global_factory()
                    new_agent(factory.create_session_manager(f"load-{thread}-{session}"))("Hello")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
        stats = MongoDBConnectionPool.get_pool_stats()
        print(f"   80 turns in {seconds:.1f} s ({80 / seconds:.0f} turns/s), {stats['commands_started']} commands,")
        print(
            f"   {stats['connections_created']} connection(s) opened, at most {stats['peak_connections_open']} open at once."
        )
    finally:
        close_global_factory()


if __name__ == "__main__":
    main()
