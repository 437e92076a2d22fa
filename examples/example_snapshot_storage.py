"""Strands' snapshot path on MongoDB: ``SnapshotSessionManager`` over ``MongoDBStorage``.

    uv run python examples/example_snapshot_storage.py     # run it twice: the second run resumes

Shows:
* ``MongoDBStorage`` as Strands' unified ``Storage``: ``SnapshotSessionManager(session_id,
  storage=...)`` saves the whole agent as one snapshot after every invocation, and an immutable
  checkpoint when ``snapshot_trigger`` says so; expiry per namespace (session snapshots expire 30
  days after their last save);
* time travel: ``list_snapshot_ids`` and ``restore_snapshot`` bring back the agent as it was;
* the same storage as ``Agent(storage=...)`` for the file memory store (``memory/...`` keys, searched
  through an index) next to the snapshots (``session/...``);
* a conversation stored by the message-log manager (``MongoDBSessionManager``) turned into a
  snapshot by ``migrate_sessions``, and restored identically from it.

Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model); see examples/README.md.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import database_name, demo_model, describe_database, describe_model, mongodb_uri, text_of
from strands import Agent
from strands.session import SnapshotSessionManager
from strands.vended_memory_stores.file_memory_store import FileMemoryStore
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository, MongoDBStorage, migrate_sessions

SESSION_ID = "snapshot-session"
AGENT_ID = "snapshot-agent"
COLLECTION = "snapshot_storage"
QUESTIONS = ["What is 6 * 7?", "And 6 * 8?"]


def open_agent(storage: MongoDBStorage) -> tuple[SnapshotSessionManager, Agent]:
    """An agent whose latest snapshot is restored from MongoDB (a checkpoint after every answer)."""
    manager = SnapshotSessionManager(SESSION_ID, storage=storage, snapshot_trigger=lambda **_: True)
    agent = Agent(
        agent_id=AGENT_ID,
        model=demo_model(),
        tools=[calculator],
        system_prompt="You are a concise assistant. Use the calculator tool for any arithmetic.",
        session_manager=manager,
        callback_handler=None,
    )
    return manager, agent


def migrate_a_message_log_session(uri: str, storage: MongoDBStorage) -> None:
    """A session stored message by message (MongoDBSessionManager) becomes a snapshot."""
    with MongoDBSessionManager(
        "message-log-session", connection_string=uri, database_name=database_name(), collection_name="log_sessions"
    ) as manager:
        logged = Agent(agent_id="logged", model=demo_model(), callback_handler=None, session_manager=manager)
        if not logged.messages:
            logged("My name is Ada.")
        with MongoDBSessionRepository(uri, database_name=database_name(), collection_name="log_sessions") as repository:
            report = migrate_sessions(
                repository,
                storage,
                session_ids=["message-log-session"],
                overwrite=True,
                progress=lambda p: print(f"  migrated {p.session_id!r}: {p.agents} agent snapshot(s) so far"),
            )
        print(f"  report: {report.sessions} session(s), {report.agents} agent snapshot(s) written")
        restored = Agent(
            agent_id="logged",
            model=demo_model(),
            callback_handler=None,
            session_manager=SnapshotSessionManager("message-log-session", storage=storage),
        )
        same = restored.messages == logged.messages and restored.state.get() == logged.state.get()
        print(f"  restored from the snapshot: {len(restored.messages)} messages, the same as the message log: {same}")


def main() -> None:
    with mongodb_uri() as uri:
        print(f"Storage: {describe_database(uri)}, database {database_name()!r}, collection {COLLECTION!r}")
        print(f"Model:   {describe_model()}")
        storage = MongoDBStorage(
            uri, database_name=database_name(), collection_name=COLLECTION, ttl={"session/": timedelta(days=30)}
        )
        with storage:
            manager, agent = open_agent(storage)
            if agent.messages:
                print(f"Resumed {SESSION_ID!r} from its latest snapshot: {len(agent.messages)} messages restored.")
            else:
                print(f"New session {SESSION_ID!r}. Run this example again to see it resume.")
            for question in QUESTIONS:
                print(f"\nuser:  {question}\nagent: {str(agent(question)).strip()}")

            checkpoints = asyncio.run(manager.list_snapshot_ids(agent))
            print(f"\nImmutable checkpoints of {AGENT_ID!r}: {len(checkpoints)}")
            asyncio.run(manager.restore_snapshot(agent, snapshot_id=checkpoints[0]))
            print(f"Time travel to the first: {len(agent.messages)} messages, ending {text_of(agent.messages[-1])!r}")
            asyncio.run(manager.restore_snapshot(agent))  # and back to the latest
            print(f"Back to the latest: {len(agent.messages)} messages")

            print("\nThe same storage as the agent's storage, for the file memory store:")
            memory = FileMemoryStore(name="facts", storage=storage)
            asyncio.run(memory.add("# Preferences\nThe user likes arithmetic with the calculator."))
            found = asyncio.run(memory.search("calculator preferences"))
            print(f"  search: {[entry.metadata['path'] for entry in found]}")

            print("\nA message-log session migrated to a snapshot:")
            migrate_a_message_log_session(uri, storage)

            keys = asyncio.run(storage.list(f"session/{SESSION_ID}/"))
            print(f"\nKeys of {SESSION_ID!r} in MongoDB ({len(keys)}):")
            for key in keys if len(keys) <= 4 else [*keys[:2], "...", keys[-1]]:
                print(f"  {key}")


if __name__ == "__main__":
    main()
