"""``python -m benchmarks.capacity``: the sizes and command counts capacity planning starts from.

Measures, on the server of ``MONGODB_URI`` (``make capacity`` starts a throwaway one):

* bytes of a session document holding 40 messages (20 turns of an agent, with metrics);
* bytes a turn adds (two messages, with the assistant's metrics);
* index bytes per session: what the server reports (``collStats.totalIndexSize``) and the
  uncompressed key bytes of every index entry a session has (its keys' BSON plus an 8-byte record
  id), plus the hashed shard-key index an operator adds;
* commands per turn and per restore.

Then extrapolates to 10 million sessions and 1,000 turns per second (docs/scaling.md shows the
arithmetic). Counts and sizes are exact for this workload; nothing here is a timing.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import bson
from pymongo import MongoClient, monitoring
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager

from mongodb_session_manager import MongoDBSessionManager

from ._model import ReplyModel

TURNS = 20  # 40 messages
SESSIONS_FOR_INDEXES = 2_000
USER_TEXT = "Please look up order 12345 and tell me when it ships, and whether I can still change the address. " * 2
REPLY = (
    "Order 12345 is packed and ships tomorrow morning by standard delivery. You can still change the "
    "delivery address until 6 pm today: open the order, choose 'Change address', and confirm. "
) * 2
TARGET_SESSIONS = 10_000_000
TARGET_TURNS_PER_SECOND = 1_000


class Counter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _agent(client: MongoClient[dict[str, Any]], database: str, session_id: str) -> Agent:
    manager = MongoDBSessionManager(session_id, client=client, database_name=database)
    return Agent(
        model=ReplyModel(REPLY),
        session_manager=manager,
        conversation_manager=SlidingWindowConversationManager(window_size=2 * TURNS),
        callback_handler=None,
    )


def _size(client: MongoClient[dict[str, Any]], database: str, session_id: str) -> int:
    (row,) = client[database]["sessions"].aggregate(
        [{"$match": {"_id": session_id}}, {"$project": {"size": {"$bsonSize": "$$ROOT"}}}]
    )
    return int(row["size"])


def measure(uri: str) -> dict[str, Any]:
    counter = Counter()
    database = f"msm_capacity_{uuid.uuid4().hex[:8]}"
    with MongoClient(uri, event_listeners=[counter]) as client:
        try:
            agent = _agent(client, database, "sizing")
            empty = _size(client, database, "sizing")
            for _ in range(TURNS - 1):
                agent(USER_TEXT)
            counter.names.clear()
            agent(USER_TEXT)
            per_turn = list(counter.names)
            document = _size(client, database, "sizing")
            counter.names.clear()
            restored = _agent(client, database, "sizing")
            per_restore = list(counter.names)
            assert len(restored.messages) == 2 * TURNS

            sessions = client[database]["sessions"]
            template = sessions.find_one({"_id": "sizing"})
            assert template is not None
            copies: list[dict[str, Any]] = []
            for number in range(SESSIONS_FOR_INDEXES):
                copy = dict(template)
                copy["_id"] = copy["session_id"] = f"{uuid.uuid4()}-{number}"
                copies.append(copy)
            sessions.insert_many(copies)
            stats = client[database].command("collStats", "sessions")
            reported = stats["totalIndexSize"] / stats["count"]
            key_bytes = {
                spec["name"]: sum(len(bson.encode({"k": copies[0].get(field)})) - 5 for field in spec["key"]) + 8
                for spec in sessions.list_indexes()
            }
            hashed_shard_key = 8 + 8  # the 64-bit hash of _id and the record id
        finally:
            client.drop_database(database)
    return {
        "messages_per_session": 2 * TURNS,
        "session_document_bytes": document,
        "empty_session_bytes": empty,
        "bytes_per_turn": (document - empty) / TURNS,
        "commands_per_turn": per_turn,
        "commands_per_restore": per_restore,
        "index_bytes_per_session_reported": reported,
        "index_key_bytes_per_session": key_bytes,
        "index_bytes_per_session_with_shard_key": sum(key_bytes.values()) + hashed_shard_key,
    }


def main() -> int:
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        print("MONGODB_URI is not set: run `make capacity`, or set MONGODB_URI.", file=sys.stderr)
        return 2
    print(json.dumps(measure(uri), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
