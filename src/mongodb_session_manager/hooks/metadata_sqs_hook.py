"""``MetadataSQSHook``: after each metadata change, send what changed to an AWS SQS queue.

The hook is a ``metadata_hook`` for :class:`~mongodb_session_manager.MongoDBSessionManager`. After a
successful ``update_metadata`` or ``delete_metadata`` it sends one JSON message naming the session,
the operation and the changed fields (only those in ``metadata_fields``, when given), so another
service can mirror session state, e.g. push it to browsers over server-sent events. Reads pass
through. Sending happens off the request path: the caller neither waits for SQS nor fails because of it.

Message body, JSON::

    {
      "type": "session.metadata.changed",
      "schema_version": 1,
      "event_id": "0b5e...",                 # unique per message, for de-duplication
      "session_id": "user-42",
      "operation": "update",                 # or "delete"
      "updated": {"status": "processing"},   # fields set, with their new values ({} for a delete)
      "deleted": [],                         # field names removed ([] for an update)
      "timestamp": "2026-11-27T10:00:00.123456+00:00"   # when the change was written (this process's clock)
    }

A consumer applies a message as ``state.update(updated)`` then removes every name in ``deleted``.
Values JSON cannot carry are converted: datetimes to ISO 8601 strings, bytes to base64, others to
their string form.

Message attributes: ``type``, ``operation`` and ``session_id`` (omitted for ids SQS cannot carry as
an attribute). A ``.fifo`` queue gets ``MessageGroupId`` (the session, so one session's changes stay
in order) and ``MessageDeduplicationId`` (the event id).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..errors import SessionValidationError
from ._base import (
    DEFAULT_EXIT_FLUSH_TIMEOUT,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SEND_TIMEOUT,
    AWSNotificationHook,
)
from ._delivery import boto3_available
from ._format import (
    encoded_size,
    is_aws_text,
    message_group_id,
    region_from_queue_url,
    string_attribute,
    to_json_value,
)

__all__ = [
    "METADATA_MESSAGE_TYPE",
    "MetadataSQSHook",
    "build_metadata_message",
    "create_metadata_sqs_hook",
    "is_metadata_sqs_hook_available",
]

#: The ``type`` field and attribute of every metadata message.
METADATA_MESSAGE_TYPE = "session.metadata.changed"
#: Version of the message's JSON layout; bumped only for changes a consumer could trip over.
SCHEMA_VERSION = 1


def is_metadata_sqs_hook_available() -> bool:
    """Whether the SQS metadata hook can build its own client (boto3 is installed)."""
    return boto3_available()


def build_metadata_message(
    session_id: str,
    operation: str,
    *,
    event_id: str,
    timestamp: datetime,
    updated: Mapping[str, Any] | None = None,
    deleted: Iterable[str] = (),
) -> dict[str, Any]:
    """Build the JSON-ready body of a metadata message (pure; no I/O).

    Args:
        session_id: The session whose metadata changed.
        operation: ``"update"`` or ``"delete"``.
        event_id: Unique id of this message.
        timestamp: When the change was written.
        updated: Fields set, with their new values.
        deleted: Names of fields removed.

    Returns:
        The body as a dict of JSON types.
    """
    return {
        "type": METADATA_MESSAGE_TYPE,
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "session_id": session_id,
        "operation": operation,
        "updated": to_json_value(dict(updated or {})),
        "deleted": list(deleted),
        "timestamp": timestamp.isoformat(),
    }


class MetadataSQSHook(AWSNotificationHook):
    """A ``metadata_hook`` that sends each successful metadata update or deletion to SQS.

    Use the object itself as the hook (``metadata_hook=MetadataSQSHook(...)``); combine it with hooks
    of your own through :func:`~mongodb_session_manager.hooks.compose_hooks`, placing it last so it
    reports what is actually written. Create it once per process and share it: it owns a background
    thread and, unless one is injected, a boto3 client.

    A change that touches none of ``metadata_fields`` sends nothing. Delivery never raises into the
    caller and never makes it wait (unless ``synchronous=True``, which sends before returning, for
    AWS Lambda, waiting at most ``send_timeout``). Failures are logged (without metadata values) and
    counted in :meth:`stats`.

    Args:
        queue_url: The SQS queue URL. Its region (from the host name) is the client's region unless
            ``region_name`` is given.
        metadata_fields: Only these fields are propagated; ``None`` (the default) propagates all.
        sqs_client: A boto3 SQS client to use (borrowed, never closed); default: one built lazily,
            with timeouts and retries derived from ``send_timeout``.
        region_name: Region of the client we build; default: the queue URL's region.
        synchronous: Send before the metadata call returns, waiting at most ``send_timeout``.
            Failures and timeouts are logged and counted as failed, not raised: the metadata is
            written either way.
        max_queue_size: Unsent messages kept at most; beyond it new ones are dropped (counted,
            logged at WARNING).
        max_queue_bytes: Encoded bytes of unsent messages kept at most (default 16 MiB); a message
            that would take the queue past it is dropped like one past ``max_queue_size``.
        send_timeout: Seconds one message may take (default 3). A synchronous caller waits no
            longer: a send still running then counts as failed and is left to finish on a daemon
            thread (it may still be delivered; it is not counted again). Clients we build give up
            after about this long; an injected client keeps its own timeouts.
        exit_flush_timeout: Seconds the interpreter waits at exit for unsent messages.

    Raises:
        AWSHooksUnavailableError: No ``sqs_client`` given and boto3 is not installed.
        SessionValidationError: The queue URL, ``metadata_fields`` or an option is invalid.

    Example:
        ```python
        sync = MetadataSQSHook("https://sqs.eu-west-1.amazonaws.com/123456789012/metadata-updates",
                               metadata_fields=["status", "agent_state", "priority"])
        manager = MongoDBSessionManager("user-42", connection_string=uri, metadata_hook=sync)
        manager.update_metadata({"status": "processing", "internal_note": "not propagated"})
        ```
    """

    _service = "sqs"
    _kind = "sqs metadata"

    def __init__(
        self,
        queue_url: str,
        metadata_fields: Iterable[str] | None = None,
        *,
        sqs_client: Any = None,
        region_name: str | None = None,
        synchronous: bool = False,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        exit_flush_timeout: float = DEFAULT_EXIT_FLUSH_TIMEOUT,
    ) -> None:
        """Create the hook; see the class docstring."""
        url_region = region_from_queue_url(queue_url)
        fields: frozenset[str] | None = None
        if metadata_fields is not None:
            if isinstance(metadata_fields, str) or not isinstance(metadata_fields, Iterable):
                raise SessionValidationError(
                    "metadata_fields", "must be a list of field names, or None for all", repr(metadata_fields)
                )
            fields = frozenset(metadata_fields)
            if not fields:
                raise SessionValidationError("metadata_fields", "must name at least one field, or be None for all")
            for name in fields:
                if not isinstance(name, str) or not name:
                    raise SessionValidationError("metadata_fields", "field names must be non-empty strings", repr(name))
        super().__init__(
            client=sqs_client,
            synchronous=synchronous,
            max_queue_size=max_queue_size,
            max_queue_bytes=max_queue_bytes,
            send_timeout=send_timeout,
            exit_flush_timeout=exit_flush_timeout,
        )
        self.queue_url = queue_url
        self.metadata_fields = fields
        self._region = region_name or url_region
        self._fifo = queue_url.rstrip("/").endswith(".fifo")

    def __repr__(self) -> str:
        fields = sorted(self.metadata_fields) if self.metadata_fields is not None else None
        return (
            f"MetadataSQSHook(queue_url={self.queue_url!r}, metadata_fields={fields!r}, synchronous={self.synchronous})"
        )

    def __call__(self, original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        """The ``metadata_hook`` protocol: write first, then send the change; reads pass through."""
        result = original_func(*kwargs.values())
        if action == "update":
            self._notify(session_id, "update", kwargs.get("metadata"))
        elif action == "delete":
            self._notify(session_id, "delete", kwargs.get("keys"))
        return result

    def _notify(self, session_id: str, operation: str, change: Any) -> None:
        # Runs on the caller's thread after the write succeeded: must never raise. The body is built
        # here, so later changes to the caller's dict cannot alter what is sent.
        try:
            fields = self.metadata_fields
            if operation == "update":
                updated = {key: value for key, value in (change or {}).items() if fields is None or key in fields}
                deleted: list[str] = []
            else:
                updated = {}
                deleted = [key for key in dict.fromkeys(change or ()) if fields is None or key in fields]
            if not updated and not deleted:
                return
            event_id = uuid.uuid4().hex
            body = build_metadata_message(
                session_id,
                operation,
                event_id=event_id,
                timestamp=datetime.now(UTC),
                updated=updated,
                deleted=deleted,
            )
            params: dict[str, Any] = {
                "QueueUrl": self.queue_url,
                "MessageBody": json.dumps(body, ensure_ascii=False),
                "MessageAttributes": {
                    "type": string_attribute(METADATA_MESSAGE_TYPE),
                    "operation": string_attribute(operation),
                },
            }
            if is_aws_text(session_id):
                params["MessageAttributes"]["session_id"] = string_attribute(session_id)
            if self._fifo:
                params["MessageGroupId"] = message_group_id(session_id)
                params["MessageDeduplicationId"] = event_id
            size = encoded_size(params)
            send = self._sender(self._region, "send_message", params)
        except Exception as e:
            self._worker.record_failure(session_id, self.queue_url, e)
            return
        self._worker.submit(session_id, self.queue_url, send, size=size)


def create_metadata_sqs_hook(queue_url: str, *args: Any, **options: Any) -> MetadataSQSHook:
    """Create a :class:`MetadataSQSHook`, to pass as ``metadata_hook``; ``args`` and ``options`` are the class's.

    Raises:
        AWSHooksUnavailableError: boto3 is not installed (``pip install "mongodb-session-manager[aws]"``)
            and no ``sqs_client`` was given.
        SessionValidationError: The queue URL, ``metadata_fields`` or an option is invalid.

    Example:
        ```python
        if is_metadata_sqs_hook_available():
            hook = create_metadata_sqs_hook(
                "https://sqs.eu-west-1.amazonaws.com/123456789012/metadata-updates",
                metadata_fields=["status", "agent_state", "priority"],
            )
            manager = MongoDBSessionManager("user-42", connection_string=uri, metadata_hook=hook)
        ```
    """
    return MetadataSQSHook(queue_url, *args, **options)
