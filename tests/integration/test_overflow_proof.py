"""The issue's two proofs: sessions far beyond MongoDB's 16 MB document limit store and restore intact.

1. **Images.** Sixty turns of a real ``strands.Agent``, each prompt carrying a distinct 1 MiB
   image (~60 MiB in all), through ``MongoDBSessionManager`` with its default thresholds. A new
   process restores every message and every image byte; a redacted image leaves storage; the
   session document stays tiny; deleting the session leaves nothing behind.
2. **A long text conversation.** 20,000 messages appended one by one through
   ``MongoDBSessionRepository.create_message`` (the append path Strands uses), with a small
   ``overflow_threshold_bytes`` so that old messages keep moving into bucket documents. A new
   process lists every message and several windows, and a ``strands.Agent`` restores the last 40;
   a redaction deep in the moved part reads back; the session document is under the threshold
   whenever it is looked at; a 40-message restore transfers about what it returns.

What the new process restores is compared through digests (:mod:`tests.support.overflow_worker`)
computed by the same functions on what this process stored. Durations are printed (``-s``) and
never asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import MongoClient, monitoring
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager, SlidingWindowConversationManager
from strands.types.content import Message
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from tests.support.overflow_worker import digest, image_digests, session_message_digest, sha256
from tests.support.scripted_model import ScriptedModel, text

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "sessions"
OVERFLOW = "sessions_overflow"

KIB = 1024
MIB = 1024 * KIB

# ------------------------------------------------------------------------------------------ helpers


def restore_in_new_process(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``tests.support.overflow_worker`` in a new process on ``request``; return its answer."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.overflow_worker"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, f"the restore process failed:\n{completed.stderr}"
    answer: dict[str, Any] = json.loads(completed.stdout)
    assert answer["pid"] != os.getpid()
    return answer


def session_document_size(client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> int:
    """Encoded size of the raw session document, in bytes."""
    document = client[database_name][SESSIONS].find_one({"_id": session_id})
    assert document is not None, f"session {session_id!r} is missing"
    return len(bson.encode(document))


def stored_agent(client: MongoClient[dict[str, Any]], database_name: str, session_id: str, agent_id: str) -> Any:
    """The raw ``agents.<id>`` sub-document, without its resident messages."""
    document = client[database_name][SESSIONS].find_one({"_id": session_id}, {f"agents.{agent_id}.messages": 0})
    assert document is not None
    return document["agents"][agent_id]


def blob_chunks(client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> dict[Any, int]:
    """``{blob id: number of chunk documents}`` of the binary values a session stores outside its document."""
    chunks: dict[Any, int] = {}
    for document in client[database_name][OVERFLOW].find({"session_id": session_id, "kind": "blob"}, {"_id": 1}):
        chunks[document["_id"]["b"]] = chunks.get(document["_id"]["b"], 0) + 1
    return chunks


def overflow_documents(client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> int:
    """How many documents of the overflow collection belong to the session."""
    return client[database_name][OVERFLOW].count_documents({"session_id": session_id})


def assert_deleted_without_trace(
    repository: MongoDBSessionRepository, client: MongoClient[dict[str, Any]], database_name: str, session_id: str
) -> None:
    """``delete_session`` removes the session document and everything stored for it outside."""
    repository.delete_session(session_id)
    assert client[database_name][SESSIONS].find_one({"_id": session_id}) is None
    assert overflow_documents(client, database_name, session_id) == 0
    assert client[database_name][OVERFLOW].count_documents({}) == 0  # nothing of any session is left
    assert repository.read_session(session_id) is None


class ReplyBytes(monitoring.CommandListener):
    """Counts the commands a client sends and the encoded bytes of their replies."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.total = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.total += len(bson.encode(event.reply))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@contextlib.contextmanager
def counting_replies(mongodb_uri: str) -> Iterator[tuple[MongoClient[dict[str, Any]], ReplyBytes]]:
    """A new client whose replies are counted (closed at the end of the block)."""
    replies = ReplyBytes()
    with MongoClient(mongodb_uri, event_listeners=[replies]) as client:
        yield client, replies


def encoded_size(messages: list[SessionMessage]) -> int:
    """BSON size of the messages' fields: what a reader of these messages has to receive at least."""
    return sum(len(bson.encode(dataclasses.asdict(message))) for message in messages)


def assert_transfer_close_to(
    replies: ReplyBytes, returned_bytes: int, history_bytes: int, notes: list[str], what: str
) -> None:
    """The replies carried what was returned plus a little (8 KiB), and far less than the history."""
    notes.append(
        f"{what}: {replies.total} reply bytes in {replies.commands}; returned {returned_bytes}, history {history_bytes}"
    )
    assert returned_bytes <= replies.total < returned_bytes + 8 * KIB, (replies.total, returned_bytes)
    assert replies.total * 100 < history_bytes


@pytest.fixture
def notes() -> Iterator[list[str]]:
    """Lines (durations, sizes) printed at the end of the test; run with ``-s`` to see them."""
    lines: list[str] = []
    yield lines
    print("\n" + "\n".join(f"  {line}" for line in lines))


@contextlib.contextmanager
def timed(notes: list[str], what: str) -> Iterator[None]:
    """Note how long the block took (printed, never asserted)."""
    start = time.perf_counter()
    yield
    notes.append(f"{what}: {time.perf_counter() - start:.1f} s")


# ------------------------------------------------------------------------------------------ proof 1: images

IMAGE_TURNS = 60
IMAGE_BYTES = 1 * MIB
IMAGES_SESSION = "sixty-pictures"
IMAGES_AGENT = "photographer"
#: The user prompt of turn 30 (user messages are the even ids): a message in the middle with an image.
REDACTED_IMAGE_MESSAGE = 60
IMAGE_REDACTION: Message = {"role": "user", "content": [{"text": "[picture removed at the user's request]"}]}


def picture_prompt(turn: int, image: bytes) -> list[Any]:
    return [{"text": f"picture {turn}"}, {"image": {"format": "png", "source": {"bytes": image}}}]


def test_sixty_turns_with_a_1_mib_image_each_restore_byte_for_byte_in_a_new_process(
    mongo_client: MongoClient[dict[str, Any]], mongodb_uri: str, database_name: str, notes: list[str]
) -> None:
    """~60 MiB of images through a real Agent: all of it comes back, redaction removes the image, delete removes all.

    The session document never holds an image (the images are above the 64 KiB offload size; the
    document stays at the 128 KiB threshold, below a quarter of one image); every image is in the overflow collection exactly once and is restored
    byte for byte by a fresh Agent in another process.
    """
    images = [os.urandom(IMAGE_BYTES) for _ in range(IMAGE_TURNS)]
    image_sha = [sha256(image) for image in images]
    assert len(set(image_sha)) == IMAGE_TURNS  # distinct per turn

    manager = MongoDBSessionManager(IMAGES_SESSION, client=mongo_client, database_name=database_name)
    repository = manager.mongodb_repository
    assert (repository.binary_offload_bytes, repository.overflow_threshold_bytes) == (64 * KIB, 128 * KIB)  # defaults
    agent = Agent(
        model=ScriptedModel([text(f"I see picture {turn}") for turn in range(IMAGE_TURNS)]),
        agent_id=IMAGES_AGENT,
        conversation_manager=NullConversationManager(),
        session_manager=manager,
        callback_handler=None,
    )
    largest_document = 0
    with timed(notes, f"{IMAGE_TURNS} agent turns with a 1 MiB image each"):
        for turn, image in enumerate(images):
            agent(picture_prompt(turn, image))
            largest_document = max(largest_document, session_document_size(mongo_client, database_name, IMAGES_SESSION))
    manager.close()

    live = list(agent.messages)
    assert len(live) == 2 * IMAGE_TURNS
    assert [image_digests(message) for message in live] == [
        [image_sha[index // 2]] if index % 2 == 0 else [] for index in range(len(live))
    ]
    expected = [digest(message) for message in live]

    # The images live outside the session document, one stored value each; the document stays tiny.
    chunks = blob_chunks(mongo_client, database_name, IMAGES_SESSION)
    assert len(chunks) == IMAGE_TURNS
    assert largest_document < IMAGE_BYTES // 4 < 4 * MIB
    final_size = session_document_size(mongo_client, database_name, IMAGES_SESSION)
    assert final_size <= largest_document
    notes.append(f"session document: {final_size} bytes at the end, {largest_document} at most")

    request = {
        "mongodb_uri": mongodb_uri,
        "database_name": database_name,
        "session_id": IMAGES_SESSION,
        "agent_id": IMAGES_AGENT,
        "agent": {"conversation_manager": "null"},
    }
    with timed(notes, "restore in a new process (60 MiB)"):
        restored = restore_in_new_process(request)["agent"]
    assert restored["roles"] == ["user", "assistant"] * IMAGE_TURNS
    assert restored["texts"] == [
        [f"picture {index // 2}"] if index % 2 == 0 else [f"I see picture {index // 2}"] for index in range(len(live))
    ]
    assert restored["images"] == [[image_sha[index // 2]] if index % 2 == 0 else [] for index in range(len(live))]
    assert restored["digests"] == expected

    # Redact a picture in the middle: reads return the redaction and its image leaves storage.
    assert image_digests(live[REDACTED_IMAGE_MESSAGE]) == [image_sha[REDACTED_IMAGE_MESSAGE // 2]]
    with timed(notes, "redact one message"):
        repository = MongoDBSessionRepository(client=mongo_client, database_name=database_name)
        original = repository.read_message(IMAGES_SESSION, IMAGES_AGENT, REDACTED_IMAGE_MESSAGE)
        assert original is not None and original.message == live[REDACTED_IMAGE_MESSAGE]
        repository.update_message(
            IMAGES_SESSION,
            IMAGES_AGENT,
            SessionMessage(
                message=IMAGE_REDACTION,
                message_id=REDACTED_IMAGE_MESSAGE,
                redact_message=IMAGE_REDACTION,
                created_at=original.created_at,
            ),
        )
    redacted = repository.read_message(IMAGES_SESSION, IMAGES_AGENT, REDACTED_IMAGE_MESSAGE)
    assert redacted is not None
    assert (redacted.message, redacted.redact_message, redacted.to_message()) == (IMAGE_REDACTION,) * 3
    assert redacted.created_at == original.created_at
    neighbours = repository.list_messages(IMAGES_SESSION, IMAGES_AGENT, offset=REDACTED_IMAGE_MESSAGE - 2, limit=5)
    assert [message.to_message() for message in neighbours] == [
        *live[REDACTED_IMAGE_MESSAGE - 2 : REDACTED_IMAGE_MESSAGE],
        IMAGE_REDACTION,
        *live[REDACTED_IMAGE_MESSAGE + 1 : REDACTED_IMAGE_MESSAGE + 3],
    ]

    remaining = blob_chunks(mongo_client, database_name, IMAGES_SESSION)
    assert set(remaining) < set(chunks)
    (removed,) = set(chunks) - set(remaining)  # exactly one image fewer, all of its chunk documents gone
    assert mongo_client[database_name][OVERFLOW].count_documents({"_id.b": removed}) == 0
    assert sum(remaining.values()) == sum(chunks.values()) - chunks[removed]

    expected[REDACTED_IMAGE_MESSAGE] = digest(IMAGE_REDACTION)
    with timed(notes, "restore after the redaction in a new process"):
        restored = restore_in_new_process(request)["agent"]
    assert restored["digests"] == expected
    assert restored["images"] == [
        [image_sha[index // 2]] if index % 2 == 0 and index != REDACTED_IMAGE_MESSAGE else []
        for index in range(len(live))
    ]
    assert session_document_size(mongo_client, database_name, IMAGES_SESSION) < 4 * MIB

    with timed(notes, "delete the session"):
        assert_deleted_without_trace(repository, mongo_client, database_name, IMAGES_SESSION)


# ------------------------------------------------------------------------------------------ proof 2: 20,000 messages

LONG_MESSAGES = 20_000
#: Small (the minimum), so that old messages keep moving out (about every 20 appends) and each
#: append stays cheap: the test server's cost per update grows with the document's size.
LONG_THRESHOLD = 16 * KIB
LONG_SESSION = "twenty-thousand-messages"
LONG_AGENT = "chatterbox"
#: What the Agent restore keeps: SlidingWindowConversationManager's default window.
WINDOW = 40
REDACTED_TEXT_MESSAGE = 10_000
TEXT_REDACTION: Message = {"role": "user", "content": [{"text": "[message 10000 redacted]"}]}
#: A prime, so the samples do not fall at the same point of every move cycle.
SAMPLE_EVERY = 97
#: ``(offset, limit)`` pages listed in the new process: the start, around the redaction, the end, everything.
WINDOWS = [(0, 5), (REDACTED_TEXT_MESSAGE - 10, 20), (LONG_MESSAGES - 20, None), (0, None)]


def long_message(index: int) -> SessionMessage:
    """Message ``index`` of the long conversation: alternating roles, ~300 distinct characters."""
    role = "user" if index % 2 == 0 else "assistant"
    body = f"message {index:05d} from the {role}: " + " ".join(f"w{(index * 7 + k) % 997}" for k in range(60))
    return SessionMessage(message={"role": role, "content": [{"text": body}]}, message_id=index)


def sliding_window_state(removed_message_count: int) -> dict[str, Any]:
    """``SlidingWindowConversationManager.get_state()`` as Strands stores it after trimming that many."""
    state = SlidingWindowConversationManager().get_state()
    assert set(state) == {"__name__", "removed_message_count", "model_call_count"}
    return {**state, "removed_message_count": removed_message_count}


def test_twenty_thousand_messages_stay_under_the_threshold_and_restore_exactly_in_a_new_process(
    mongo_client: MongoClient[dict[str, Any]],
    mongodb_uri: str,
    database_name: str,
    notes: list[str],
    request: pytest.FixtureRequest,
) -> None:
    """20,000 appends move old messages into buckets; every message, window and redaction reads back exactly.

    The session document is under ``overflow_threshold_bytes`` every time it is sampled during the
    appends and at the end; a fresh process lists all messages and several windows across the
    buckets and the document, and a fresh Agent restores exactly the last 40. A restore of those 40
    transfers about what it returns, not the history.
    """
    # The appends go through a client without retryable writes: SecantusDB keeps every retryable
    # write's reply for 30 minutes and, past 10,000 of them, sorts them all on each further write
    # (secantus.transactions.TransactionRegistry._prune_retryable_locked), which makes 20,000
    # appends ten times slower. The library sends the same commands either way.
    appender: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, retryWrites=False)
    request.addfinalizer(appender.close)
    repository = MongoDBSessionRepository(
        client=appender, database_name=database_name, overflow_threshold_bytes=LONG_THRESHOLD
    )
    repository.create_session(Session(session_id=LONG_SESSION, session_type=SessionType.AGENT))
    repository.create_agent(
        LONG_SESSION,
        SessionAgent(
            agent_id=LONG_AGENT,
            state={},
            conversation_manager_state=sliding_window_state(LONG_MESSAGES - WINDOW),
        ),
    )

    stored: list[SessionMessage] = []
    sizes: list[int] = []
    with timed(notes, f"{LONG_MESSAGES} appends (create_message)"):
        for index in range(LONG_MESSAGES):
            message = long_message(index)
            repository.create_message(LONG_SESSION, LONG_AGENT, message)
            stored.append(message)
            if (index + 1) % SAMPLE_EVERY == 0:
                sizes.append(session_document_size(mongo_client, database_name, LONG_SESSION))
    sizes.append(session_document_size(mongo_client, database_name, LONG_SESSION))
    assert len(sizes) == LONG_MESSAGES // SAMPLE_EVERY + 1
    assert max(sizes) <= LONG_THRESHOLD, f"session document sizes every {SAMPLE_EVERY} appends: {sizes}"

    agent = stored_agent(mongo_client, database_name, LONG_SESSION, LONG_AGENT)
    moved = agent["overflow_count"]
    assert agent["message_count"] == LONG_MESSAGES
    assert moved > REDACTED_TEXT_MESSAGE  # the message to redact has moved into a bucket
    assert sum(descriptor["count"] for descriptor in agent["overflow"]) == moved
    buckets = mongo_client[database_name][OVERFLOW].count_documents({"session_id": LONG_SESSION, "kind": "messages"})
    assert buckets == len(agent["overflow"])
    notes.append(
        f"session document at {len(sizes)} samples: {min(sizes)} to {max(sizes)} bytes (threshold {LONG_THRESHOLD}); "
        f"{moved} messages in {buckets} buckets, {LONG_MESSAGES - moved} resident"
    )

    with timed(notes, f"redact message {REDACTED_TEXT_MESSAGE} (in a bucket)"):
        original = stored[REDACTED_TEXT_MESSAGE]
        redaction = SessionMessage(
            message=TEXT_REDACTION,
            message_id=REDACTED_TEXT_MESSAGE,
            redact_message=TEXT_REDACTION,
            created_at=original.created_at,
        )
        repository.update_message(LONG_SESSION, LONG_AGENT, redaction)  # sets redaction.updated_at
    assert redaction.updated_at != original.updated_at
    stored[REDACTED_TEXT_MESSAGE] = redaction
    assert repository.read_message(LONG_SESSION, LONG_AGENT, REDACTED_TEXT_MESSAGE) == redaction
    assert session_document_size(mongo_client, database_name, LONG_SESSION) <= LONG_THRESHOLD

    expected = [session_message_digest(message) for message in stored]
    windows = [*WINDOWS, (moved - 10, 20)]  # the last: across the last bucket and the document
    with timed(notes, "list windows and restore an Agent in a new process"):
        answer = restore_in_new_process(
            {
                "mongodb_uri": mongodb_uri,
                "database_name": database_name,
                "session_id": LONG_SESSION,
                "agent_id": LONG_AGENT,
                "overflow_threshold_bytes": LONG_THRESHOLD,
                "agent": {"conversation_manager": "sliding"},
                "windows": windows,
            }
        )
    for window, (offset, limit) in zip(answer["windows"], windows, strict=True):
        end = LONG_MESSAGES if limit is None else offset + limit
        assert window["message_ids"] == list(range(offset, end)), (offset, limit)
        assert window["digests"] == expected[offset:end], (offset, limit)
    around = answer["windows"][1]["digests"]  # messages 9,990 to 10,009: the redaction, neighbours unchanged
    assert around[10] == session_message_digest(redaction)
    for neighbour, index in ((around[9], REDACTED_TEXT_MESSAGE - 1), (around[11], REDACTED_TEXT_MESSAGE + 1)):
        assert stored[index].message == long_message(index).message  # as first appended
        assert neighbour == session_message_digest(stored[index])

    restored = answer["agent"]
    tail = [message.to_message() for message in stored[-WINDOW:]]
    assert restored["digests"] == [digest(message) for message in tail]
    assert restored["texts"][0] == [stored[LONG_MESSAGES - WINDOW].message["content"][0]["text"]]
    assert restored["conversation_manager_state"]["removed_message_count"] == LONG_MESSAGES - WINDOW

    # The same 40-message restore in this process, and a 40-message page from the buckets, counting
    # the bytes of every reply: about what they return, a tiny part of the history.
    history_bytes = encoded_size(stored)
    with counting_replies(mongodb_uri) as (client, replies):
        manager = MongoDBSessionManager(
            LONG_SESSION, client=client, database_name=database_name, overflow_threshold_bytes=LONG_THRESHOLD
        )
        agent_again = Agent(
            model=ScriptedModel([]),
            agent_id=LONG_AGENT,
            conversation_manager=SlidingWindowConversationManager(),
            session_manager=manager,
            callback_handler=None,
        )
        manager.close()
    assert agent_again.messages == tail
    assert_transfer_close_to(replies, encoded_size(stored[-WINDOW:]), history_bytes, notes, "Agent restore, last 40")

    with counting_replies(mongodb_uri) as (client, replies):
        reader = MongoDBSessionRepository(
            client=client, database_name=database_name, overflow_threshold_bytes=LONG_THRESHOLD
        )
        page = reader.list_messages(LONG_SESSION, LONG_AGENT, offset=REDACTED_TEXT_MESSAGE - 20, limit=WINDOW)
    assert page == stored[REDACTED_TEXT_MESSAGE - 20 : REDACTED_TEXT_MESSAGE + 20]
    assert_transfer_close_to(replies, encoded_size(page), history_bytes, notes, "list_messages of 40 from the buckets")

    with timed(notes, "delete the session"):
        assert_deleted_without_trace(repository, mongo_client, database_name, LONG_SESSION)
