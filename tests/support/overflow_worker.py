"""Read back the overflow proofs' sessions in a process of their own and report digests.

``tests/integration/test_overflow_proof.py`` stores long sessions (large images, tens of thousands
of messages) and then asks this module, in a new process that shares nothing with it but the
database, to restore them: through a real ``strands.Agent`` with ``MongoDBSessionManager``, and
through ``MongoDBSessionRepository.list_messages`` windows. What comes back is too large to ship
whole (60 MB of images, 20,000 messages), so the worker answers with digests computed by the same
functions the test uses on what it stored (:func:`digest`, :func:`image_digests`).

Run from the repository root, the request as JSON on stdin, the answer as JSON on stdout::

    python -m tests.support.overflow_worker < REQUEST.json

Request fields: ``mongodb_uri``, ``database_name``, ``session_id``, ``agent_id``,
``overflow_threshold_bytes`` (optional), ``agent`` (``null``, or ``{"conversation_manager":
"null" | "sliding"}`` to restore an ``Agent``), ``windows`` (``[[offset, limit or null], ...]``
to list with the repository).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from strands import Agent
from strands.agent.conversation_manager import (
    ConversationManager,
    NullConversationManager,
    SlidingWindowConversationManager,
)
from strands.types.content import Message
from strands.types.session import SessionMessage

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from tests.support.scripted_model import ScriptedModel

__all__ = ["digest", "image_digests", "restore", "session_message_digest", "sha256"]

_BYTES_TAG = "__sha256_of_bytes__"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` with every ``bytes`` replaced by a tagged SHA-256; anything not JSON-able is refused.

    Types are checked strictly (a ``bson.Binary`` or a tuple raises), so a restore that changed a
    type cannot produce the same digest.
    """
    if value is None or type(value) in (str, bool, int, float):
        return value
    if type(value) is bytes:
        return {_BYTES_TAG: sha256(value)}
    if type(value) is list:
        return [_canonical(item) for item in value]
    if type(value) is dict:
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict key {key!r} is not a string")
            encoded[key] = _canonical(item)
        return encoded
    raise TypeError(f"cannot digest {type(value).__name__} value {value!r}")


def digest(value: Any) -> str:
    """SHA-256 of ``value``'s JSON text: differs whenever a value, a type or a key order differs."""
    text = json.dumps(_canonical(value), ensure_ascii=False, separators=(",", ":"))
    return sha256(text.encode("utf-8"))


def session_message_digest(session_message: SessionMessage) -> str:
    """Digest of every field of a stored message (ids, content, redaction and timestamps)."""
    return digest(dataclasses.asdict(session_message))


def image_digests(message: Message) -> list[str]:
    """SHA-256 of each image's bytes in a message, in order."""
    return [
        sha256(block["image"]["source"]["bytes"])
        for block in message["content"]
        if "image" in block and "bytes" in block["image"]["source"]
    ]


def _texts(message: Message) -> list[str]:
    return [block["text"] for block in message["content"] if "text" in block]


def _conversation_manager(kind: str) -> ConversationManager:
    if kind == "null":
        return NullConversationManager()
    if kind == "sliding":
        return SlidingWindowConversationManager()
    raise ValueError(f"unknown conversation manager {kind!r}")


def _storage_options(request: Mapping[str, Any]) -> dict[str, Any]:
    if request.get("overflow_threshold_bytes") is None:
        return {}
    return {"overflow_threshold_bytes": request["overflow_threshold_bytes"]}


def _restore_agent(request: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh ``Agent`` with ``MongoDBSessionManager`` on the stored session; what it holds."""
    manager = MongoDBSessionManager(
        request["session_id"],
        connection_string=request["mongodb_uri"],
        database_name=request["database_name"],
        **_storage_options(request),
    )
    try:
        if manager._is_new_session:  # the manager just created it: there was nothing to restore
            raise LookupError(f"session {request['session_id']!r} was not found")
        agent = Agent(
            model=ScriptedModel([]),  # never called: a restore needs no model
            agent_id=request["agent_id"],
            conversation_manager=_conversation_manager(request["agent"]["conversation_manager"]),
            session_manager=manager,
            callback_handler=None,
        )
        return {
            "digests": [digest(message) for message in agent.messages],
            "roles": [message["role"] for message in agent.messages],
            "texts": [_texts(message) for message in agent.messages],
            "images": [image_digests(message) for message in agent.messages],
            "conversation_manager_state": agent.conversation_manager.get_state(),
        }
    finally:
        manager.close()


def _list_windows(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``list_messages`` for each ``[offset, limit]`` window, through a fresh repository."""
    windows = []
    with MongoDBSessionRepository(
        request["mongodb_uri"], database_name=request["database_name"], **_storage_options(request)
    ) as repository:
        for offset, limit in request["windows"]:
            messages = repository.list_messages(request["session_id"], request["agent_id"], limit=limit, offset=offset)
            windows.append(
                {
                    "offset": offset,
                    "limit": limit,
                    "message_ids": [message.message_id for message in messages],
                    "digests": [session_message_digest(message) for message in messages],
                }
            )
    return windows


def restore(request: Mapping[str, Any]) -> dict[str, Any]:
    """Do what ``request`` asks (see the module docstring) and return the answer."""
    answer: dict[str, Any] = {"pid": os.getpid()}
    if request.get("agent") is not None:
        answer["agent"] = _restore_agent(request)
    if request.get("windows"):
        answer["windows"] = _list_windows(request)
    return answer


def main() -> int:
    """Read the request from stdin, write the answer to stdout."""
    answer = restore(json.load(sys.stdin))
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    from tests.support.command_audit import install_in_worker

    install_in_worker()
    sys.exit(main())
