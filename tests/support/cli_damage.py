"""Damage for ``verify`` to find: every kind the reliability tests create, made the way they make it.

A client "crash" is simulated as in ``tests/integration/test_reliability_overflow.py``: the
repository's collections are wrapped so that the N-th command raises a ``BaseException`` instead of
being sent, and that repository is abandoned there, as a process that died would be. Crashing a
move, a merge, an append with a binary or a redaction at every step leaves, at some steps, records
of unfinished writes, uncommitted buckets, the old images of a redaction, a merge's replaced
buckets. The other damage is done by hand in ``test_cli_verify.py``, as those tests do it: a history whose tail was removed, a
malformed descriptor, a deleted bucket, damaged chunks, an overflow document expiring before its
session.

:func:`leftovers` is the reliability tests' own definition of "a crash left something": a record
of an unfinished write, or an overflow document of the session that nothing refers to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionRepository
from mongodb_session_manager._overflow import BlobRef

__all__ = [
    "OFFLOAD",
    "THRESHOLD",
    "Crash",
    "content",
    "crash_every_step",
    "image_message",
    "leftovers",
    "message",
    "redacted",
    "repository",
    "session",
]

THRESHOLD = 16 * 1024
OFFLOAD = 2048
_COMMANDS = frozenset(
    {
        "aggregate",
        "count_documents",
        "delete_many",
        "find",
        "find_one",
        "find_one_and_delete",
        "find_one_and_update",
        "insert_many",
        "insert_one",
        "update_many",
        "update_one",
    }
)


class Crash(BaseException):
    """The simulated death of the client process."""


class _Steps:
    def __init__(self, at: int) -> None:
        self.at = at
        self.sent = 0

    def tick(self) -> None:
        if self.sent >= self.at:
            raise Crash(f"crashed before command {self.sent}")
        self.sent += 1


class _Wrapped:
    def __init__(self, target: Any, steps: _Steps) -> None:
        self._target, self._steps = target, steps

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in _COMMANDS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._steps.tick()
            return attribute(*args, **kwargs)

        return call


def repository(client: Any, database_name: str, **options: Any) -> MongoDBSessionRepository:
    """A repository with small thresholds, so moves, merges and offloads happen after a few messages."""
    options = {"overflow_threshold_bytes": THRESHOLD, "binary_offload_bytes": OFFLOAD, **options}
    return MongoDBSessionRepository(client=client, database_name=database_name, **options)


def _crashing(repo: MongoDBSessionRepository, at: int) -> MongoDBSessionRepository:
    other = MongoDBSessionRepository(
        client=repo.client,
        database_name=repo.database_name,
        overflow_threshold_bytes=repo.overflow_threshold_bytes,
        binary_offload_bytes=repo.binary_offload_bytes,
    )
    steps = _Steps(at)
    other.collection = _Wrapped(other.collection, steps)  # type: ignore[assignment]
    other.overflow = _Wrapped(other.overflow, steps)  # type: ignore[assignment]
    return other


def _text(index: int, length: int = 300) -> str:
    return f"SECRET-{index:04d} " + "abcdefghij"[index % 10] * length


def message(index: int, length: int = 300) -> SessionMessage:
    """Message ``index`` of agent ``a``: about ``length`` characters of text."""
    role: Any = "user" if index % 2 == 0 else "assistant"
    return SessionMessage(message={"role": role, "content": [{"text": _text(index, length)}]}, message_id=index)


def image_message(index: int, data: bytes) -> SessionMessage:
    content: list[Any] = [{"text": _text(index)}, {"image": {"format": "png", "source": {"bytes": data}}}]
    return SessionMessage(message={"role": "user", "content": content}, message_id=index)


def redacted(index: int, data: bytes | None = None) -> SessionMessage:
    content: list[Any] = [{"text": f"[redacted {index}]"}]
    if data is not None:
        content.append({"image": {"format": "png", "source": {"bytes": data}}})
    return SessionMessage(message={"role": "user", "content": content}, message_id=index)


def session(
    repo: MongoDBSessionRepository,
    session_id: str,
    count: int,
    images: dict[int, bytes] | None = None,
    length: int = 300,
) -> None:
    """A session with agent ``a`` holding ``count`` messages of ``length`` characters (images at the given ids).

    Longer messages reach moves and merges in fewer appends: each move frees half the threshold.
    """
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    repo.create_agent(session_id, SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
    for index in range(count):
        image = (images or {}).get(index)
        repo.create_message(session_id, "a", message(index, length) if image is None else image_message(index, image))


def content(messages: list[SessionMessage]) -> list[Any]:
    return [(m.message_id, m.message, m.redact_message) for m in messages]


def _operation(kind: str) -> tuple[Callable[[MongoDBSessionRepository, str], None], Callable[..., None]]:
    """``(prepare(repo, session_id), act(crashing_repo, session_id))`` of one crash-tested operation."""
    if kind == "move":  # with 3000-character messages, appending message 4 is the first to move old ones out
        return (lambda repo, sid: session(repo, sid, 4, length=3000)), (
            lambda crashing, sid: crashing.create_message(sid, "a", message(4, 3000))
        )
    if kind == "merge":  # 13 small buckets, which merge_buckets merges
        return (lambda repo, sid: session(repo, sid, 30, length=3000)), (
            lambda crashing, sid: crashing._overflow.merge_buckets(sid, "a")
        )
    if kind == "append":
        return (lambda repo, sid: session(repo, sid, 3)), (
            lambda crashing, sid: crashing.create_message(sid, "a", image_message(3, os.urandom(OFFLOAD * 3)))
        )
    if kind in ("redact-resident", "redact-moved"):
        count, length = (3, 300) if kind == "redact-resident" else (12, 3000)
        return (lambda repo, sid: session(repo, sid, count, images={1: os.urandom(OFFLOAD * 3)}, length=length)), (
            lambda crashing, sid: crashing.update_message(sid, "a", redacted(1, os.urandom(OFFLOAD * 3)))
        )
    raise ValueError(kind)


def crash_every_step(repo: MongoDBSessionRepository, kind: str, steps: range | None = None) -> list[str]:
    """Sessions ``<kind>-<n>``: the operation crashed before its command n, for every n until it finishes.

    Returns:
        The session ids, in order (the last one's operation finished).
    """
    prepare, act = _operation(kind)
    made = []
    for step in steps if steps is not None else range(100):
        session_id = f"{kind}-{step}"
        prepare(repo, session_id)
        made.append(session_id)
        try:
            act(_crashing(repo, step), session_id)
        except Crash:
            continue
        break
    return made


def leftovers(repo: MongoDBSessionRepository, session_id: str) -> bool:
    """Whether a crash left something in the session: a record of an unfinished write, or an overflow
    document nothing refers to (the reliability tests' ``_assert_nothing_unreferenced``, as a question)."""
    document = repo.collection.find_one({"_id": session_id})
    assert document is not None
    if document.get("overflow_pending"):
        return True
    buckets = {d["id"] for agent in document["agents"].values() for d in agent.get("overflow") or []}
    refs = [
        ref for agent in document["agents"].values() for entry in agent["messages"] for ref in entry.get("blobs", [])
    ]
    for bucket in repo.overflow.find({"_id": {"$in": list(buckets)}}):
        refs.extend(ref for entry in bucket["messages"] for ref in entry.get("blobs", []))
    blob_ids = {BlobRef.from_binary(ref).blob_id for ref in refs}
    for doc in repo.overflow.find({"session_id": session_id}, {"_id": 1}):
        if isinstance(doc["_id"], dict) and doc["_id"]["b"] not in blob_ids:
            return True
        if not isinstance(doc["_id"], dict) and doc["_id"] not in buckets:
            return True
    return False
