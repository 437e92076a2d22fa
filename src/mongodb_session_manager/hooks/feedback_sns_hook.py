"""``FeedbackSNSHook``: store user feedback, then announce it on an AWS SNS topic.

The hook is a ``feedback_hook`` for :class:`~mongodb_session_manager.MongoDBSessionManager`. It stores
the feedback first (the original function), and only if that succeeded publishes a small JSON
notification, by default for negative feedback only. Publishing happens off the request path: the
caller's ``add_feedback`` neither waits for SNS nor fails because of it.

Message body (``Message``), JSON::

    {
      "type": "session.feedback.added",
      "schema_version": 1,
      "event_id": "6f1c...",                  # unique per notification, for de-duplication
      "session_id": "user-42",
      "rating": "down",                       # "up", "down" or null
      "comment": "Response was incomplete",   # cut to max_comment_chars; omitted if include_comment=False
      "comment_truncated": false,
      "created_at": "2026-11-27T10:00:00.123000+00:00",   # the stored entry's server timestamp
      "context": {"app": "support-bot"}       # only if configured
    }

Message attributes (for SNS subscription filter policies): ``type``, ``rating`` (``"up"``,
``"down"`` or ``"none"``) and ``session_id`` (omitted for ids SNS cannot carry as an attribute).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

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
    region_from_topic_arn,
    string_attribute,
    to_json_value,
)

__all__ = [
    "DEFAULT_NOTIFY_RATINGS",
    "FEEDBACK_MESSAGE_TYPE",
    "FeedbackContext",
    "FeedbackSNSHook",
    "Rating",
    "build_feedback_notification",
    "create_feedback_sns_hook",
    "is_feedback_sns_hook_available",
]

#: The ``type`` field and attribute of every feedback notification.
FEEDBACK_MESSAGE_TYPE = "session.feedback.added"
#: Version of the notification's JSON layout; bumped only for changes a consumer could trip over.
SCHEMA_VERSION = 1

#: A feedback rating as the manager stores it.
Rating = Literal["up", "down"] | None
#: Extra fields for every notification: a fixed mapping, or a function of the session id called on
#: the caller's thread (so it may read request-scoped state) for each notification.
FeedbackContext = Mapping[str, Any] | Callable[[str], Mapping[str, Any]]

#: Ratings that notify by default: negative feedback raises an alert.
DEFAULT_NOTIFY_RATINGS: tuple[Rating, ...] = ("down",)

_RATINGS: tuple[Rating, ...] = ("up", "down", None)
_SUBJECT_LABELS: dict[Rating, str] = {"up": "Positive", "down": "Negative", None: "Unrated"}
_SUBJECT_MAX = 99  # SNS: fewer than 100 characters


def is_feedback_sns_hook_available() -> bool:
    """Whether the SNS feedback hook can build its own client (boto3 is installed)."""
    return boto3_available()


def build_feedback_notification(
    session_id: str,
    entry: Mapping[str, Any],
    *,
    event_id: str,
    include_comment: bool = True,
    max_comment_chars: int = 1000,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the JSON-ready body of a feedback notification (pure; no I/O).

    Args:
        session_id: The session the feedback belongs to.
        entry: The stored feedback entry (``rating``, ``comment``, ``created_at``).
        event_id: Unique id of this notification.
        include_comment: Whether to include the comment at all.
        max_comment_chars: Longest comment included; longer ones are cut and flagged.
        context: Extra fields, placed under ``"context"``.

    Returns:
        The body as a dict of JSON types.
    """
    created_at = entry.get("created_at")
    body: dict[str, Any] = {
        "type": FEEDBACK_MESSAGE_TYPE,
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "session_id": session_id,
        "rating": entry.get("rating"),
    }
    if include_comment:
        comment = entry.get("comment") or ""
        comment = comment if isinstance(comment, str) else str(comment)
        body["comment"] = comment[:max_comment_chars]
        body["comment_truncated"] = len(comment) > max_comment_chars
    body["created_at"] = created_at.isoformat() if isinstance(created_at, datetime) else to_json_value(created_at)
    if context:
        body["context"] = to_json_value(context)
    return body


def feedback_subject(rating: Rating, session_id: str, prefix: str = "") -> str:
    """An SNS ``Subject`` (for e-mail subscribers): printable ASCII, one line, under 100 characters."""
    text = f"{prefix}{_SUBJECT_LABELS.get(rating, 'Unrated')} feedback on session {session_id}"
    text = "".join(char if " " <= char <= "~" else "?" for char in text).strip()
    return text if len(text) <= _SUBJECT_MAX else text[: _SUBJECT_MAX - 3] + "..."


class FeedbackSNSHook(AWSNotificationHook):
    """A ``feedback_hook`` that stores feedback, then publishes a JSON notification to SNS.

    Use the object itself as the hook (``feedback_hook=FeedbackSNSHook(...)``); combine it with hooks
    of your own through :func:`~mongodb_session_manager.hooks.compose_hooks`. Create it once per
    process and share it: it owns a background thread and, unless one is injected, a boto3 client.

    Which feedback notifies, and where: a rating listed in ``rating_topics`` goes to its own topic;
    otherwise a rating in ``notify_ratings`` goes to ``topic_arn``; anything else is stored without
    a notification.

    Delivery never raises into the caller and never makes it wait (unless ``synchronous=True``,
    which sends before returning, for AWS Lambda, waiting at most ``send_timeout``). Failures are
    logged (without comment text) and counted in :meth:`stats`.

    Args:
        topic_arn: The SNS topic for ratings in ``notify_ratings``. Its region is the client's region
            unless ``region_name`` is given. A ``.fifo`` topic gets ``MessageGroupId`` (the session)
            and ``MessageDeduplicationId`` (the event id).
        notify_ratings: Ratings that notify ``topic_arn``: any of ``"up"``, ``"down"``, ``None``.
            Default: ``("down",)``, alerts for negative feedback.
        rating_topics: Per-rating topics, e.g. ``{"up": praise_arn}``; they take precedence over
            ``topic_arn`` and notify whether or not the rating is in ``notify_ratings``.
        context: Extra JSON fields under ``"context"`` (environment, application, a link to your
            session viewer): a mapping, or a callable ``context(session_id) -> mapping`` run on the
            caller's thread. Never put secrets here. If the callable raises, that notification is
            not sent and counts as failed.
        include_comment: Whether notifications carry the user's comment.
        max_comment_chars: Longest comment included (longer ones are cut, ``comment_truncated``).
        subject_prefix: Prefix of the ``Subject`` e-mail subscribers see, e.g. ``"[prod] "``.
        sns_client: A boto3 SNS client to use (borrowed, never closed); default: one built lazily
            per region, with timeouts and retries derived from ``send_timeout``.
        region_name: Region of the client we build; default: each topic ARN's own region.
        synchronous: Publish before ``add_feedback`` returns, waiting at most ``send_timeout``.
            Failures and timeouts are logged and counted as failed, not raised: the feedback is
            stored either way.
        max_queue_size: Unsent notifications kept at most; beyond it new ones are dropped (counted,
            logged at WARNING).
        max_queue_bytes: Encoded bytes of unsent notifications kept at most (default 16 MiB); a
            notification that would take the queue past it is dropped like one past ``max_queue_size``.
        send_timeout: Seconds one notification may take (default 3). A synchronous caller waits no
            longer: a publish still running then counts as failed and is left to finish on a daemon
            thread (it may still be delivered; it is not counted again). Clients we build give up
            after about this long; an injected client keeps its own timeouts.
        exit_flush_timeout: Seconds the interpreter waits at exit for unsent notifications.

    Raises:
        AWSHooksUnavailableError: No ``sns_client`` given and boto3 is not installed.
        SessionValidationError: An ARN, a rating or an option is invalid.

    Example:
        ```python
        alerts = FeedbackSNSHook("arn:aws:sns:eu-west-1:123456789012:feedback-alerts",
                                 context={"app": "support-bot", "env": "prod"})
        manager = MongoDBSessionManager("user-42", connection_string=uri, feedback_hook=alerts)
        manager.add_feedback({"rating": "down", "comment": "Incomplete answer"})
        ```
    """

    _service = "sns"
    _kind = "sns feedback"

    def __init__(
        self,
        topic_arn: str,
        *,
        notify_ratings: Collection[Rating] = DEFAULT_NOTIFY_RATINGS,
        rating_topics: Mapping[Rating, str] | None = None,
        context: FeedbackContext | None = None,
        include_comment: bool = True,
        max_comment_chars: int = 1000,
        subject_prefix: str = "",
        sns_client: Any = None,
        region_name: str | None = None,
        synchronous: bool = False,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        exit_flush_timeout: float = DEFAULT_EXIT_FLUSH_TIMEOUT,
    ) -> None:
        """Create the hook; see the class docstring."""
        region_from_topic_arn(topic_arn)
        if isinstance(notify_ratings, str) or not isinstance(notify_ratings, Collection):
            raise SessionValidationError(
                "notify_ratings", "must be a collection of ratings such as ('down',)", repr(notify_ratings)
            )
        routes: dict[Rating, str] = {}
        for rating in notify_ratings:
            _check_rating("notify_ratings", rating)
            routes[rating] = topic_arn
        if rating_topics is not None:
            if not isinstance(rating_topics, Mapping):
                raise SessionValidationError("rating_topics", "must be a mapping of rating to topic ARN")
            for rating, arn in rating_topics.items():
                _check_rating("rating_topics", rating)
                region_from_topic_arn(arn, "rating_topics")
                routes[rating] = arn
        if context is not None and not (isinstance(context, Mapping) or callable(context)):
            raise SessionValidationError("context", f"must be a mapping or a callable, got {type(context).__name__}")
        if isinstance(max_comment_chars, bool) or not isinstance(max_comment_chars, int) or max_comment_chars < 0:
            raise SessionValidationError("max_comment_chars", "must be an integer >= 0", max_comment_chars)
        if not isinstance(subject_prefix, str):
            raise SessionValidationError("subject_prefix", "must be a string")
        super().__init__(
            client=sns_client,
            synchronous=synchronous,
            max_queue_size=max_queue_size,
            max_queue_bytes=max_queue_bytes,
            send_timeout=send_timeout,
            exit_flush_timeout=exit_flush_timeout,
        )
        self.topic_arn = topic_arn
        self.notify_ratings: frozenset[Rating] = frozenset(notify_ratings)
        self.rating_topics: dict[Rating, str] = dict(rating_topics or {})
        self._routes = routes
        self._region_name = region_name
        # A fixed mapping is converted once, so later changes to the caller's dict do not leak in.
        self._context: FeedbackContext | None = to_json_value(context) if isinstance(context, Mapping) else context
        self.include_comment = include_comment
        self.max_comment_chars = max_comment_chars
        self.subject_prefix = subject_prefix

    def __repr__(self) -> str:
        return (
            f"FeedbackSNSHook(topic_arn={self.topic_arn!r}, notify_ratings={sorted(map(str, self.notify_ratings))}, "
            f"rating_topics={self.rating_topics!r}, synchronous={self.synchronous})"
        )

    def topic_for(self, rating: Rating) -> str | None:
        """The topic a feedback with ``rating`` is published to, or ``None`` if it does not notify."""
        return self._routes.get(rating)

    def __call__(self, original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        """The ``feedback_hook`` protocol: store first, then notify; other actions pass through."""
        result = original_func(*kwargs.values())
        if action == "add":
            self._notify(session_id, kwargs.get("feedback"), result)
        return result

    def _notify(self, session_id: str, feedback: Any, result: Any) -> None:
        # Runs on the caller's thread after the write succeeded: must never raise.
        destination = self.topic_arn
        try:
            entry = _stored_entry(feedback, result)
            rating = entry.get("rating")
            topic_arn = self._routes.get(rating)
            if topic_arn is None:
                return
            destination = topic_arn
            context = self._context(session_id) if callable(self._context) else self._context
            if context is not None and not isinstance(context, Mapping):
                raise TypeError(f"context() returned {type(context).__name__}, not a mapping")
            event_id = uuid.uuid4().hex
            body = build_feedback_notification(
                session_id,
                entry,
                event_id=event_id,
                include_comment=self.include_comment,
                max_comment_chars=self.max_comment_chars,
                context=context,
            )
            params: dict[str, Any] = {
                "TopicArn": topic_arn,
                "Message": json.dumps(body, ensure_ascii=False),
                "Subject": feedback_subject(rating, session_id, self.subject_prefix),
                "MessageAttributes": {
                    "type": string_attribute(FEEDBACK_MESSAGE_TYPE),
                    "rating": string_attribute(rating if rating is not None else "none"),
                },
            }
            if is_aws_text(session_id):
                params["MessageAttributes"]["session_id"] = string_attribute(session_id)
            if topic_arn.endswith(".fifo"):
                params["MessageGroupId"] = message_group_id(session_id)
                params["MessageDeduplicationId"] = event_id
            region = self._region_name or region_from_topic_arn(topic_arn)
            size = encoded_size(params)
            publish = self._sender(region, "publish", params)
        except Exception as e:
            self._worker.record_failure(session_id, destination, e)
            return
        self._worker.submit(session_id, topic_arn, publish, size=size)


def _check_rating(field: str, rating: Any) -> None:
    if rating not in _RATINGS or isinstance(rating, bool):
        raise SessionValidationError(field, "ratings are 'up', 'down' or None", repr(rating))


def _stored_entry(feedback: Any, result: Any) -> dict[str, Any]:
    """What was stored: the entry ``add_feedback`` returned, else the feedback passed in, stamped now.

    The fallback covers an inner hook that returns something else than the stored entry.
    """
    if isinstance(result, Mapping) and "rating" in result:
        return dict(result)
    entry = dict(feedback) if isinstance(feedback, Mapping) else {}
    entry.setdefault("rating", None)
    entry.setdefault("created_at", datetime.now(UTC))
    return entry


def create_feedback_sns_hook(topic_arn: str, **options: Any) -> FeedbackSNSHook:
    """Create a :class:`FeedbackSNSHook`, to pass as ``feedback_hook``; ``options`` are the class's keyword arguments.

    Raises:
        AWSHooksUnavailableError: boto3 is not installed (``pip install "mongodb-session-manager[aws]"``)
            and no ``sns_client`` was given.
        SessionValidationError: An ARN, a rating or an option is invalid.

    Example:
        ```python
        if is_feedback_sns_hook_available():
            hook = create_feedback_sns_hook("arn:aws:sns:eu-west-1:123456789012:feedback-alerts")
            manager = MongoDBSessionManager("user-42", connection_string=uri, feedback_hook=hook)
        ```
    """
    return FeedbackSNSHook(topic_arn, **options)
