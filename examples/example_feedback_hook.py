"""Feedback with hooks: audit, validate, alert on thumbs-down and count, around ``add_feedback``.

    uv run python examples/example_feedback_hook.py     # run it twice: feedback accumulates

A feedback hook is called as ``hook(original_func, "add", session_id, feedback=...)`` instead of
``add_feedback``; it calls ``original_func(feedback)`` to store (possibly a changed copy), may raise
to refuse (nothing is stored), and what it returns is what ``add_feedback`` returns. Each entry is
stored as ``{"rating": "up" | "down" | None, "comment": str, "created_at": <server time>}``.

Shows: the feedback follows an agent's answer; an audit hook (logs the rating and the comment's
length, never its text), a validation hook (a thumbs-down needs a comment; comments are trimmed),
an alert hook (where you would notify a team, or publish to SNS), an analytics hook, ``chain`` to
combine them; what was refused; and the stored entries read back by a new manager.
Uses MONGODB_URI (else an embedded local server, data in .data/) and a Bedrock model when AWS
credentials are configured (else an offline demo model); see examples/README.md.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import database_name, demo_model, mongodb_uri, print_setup
from strands import Agent
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager, SessionValidationError

SESSION_ID = "feedback-hook-session"
COLLECTION = "feedback_hook_sessions"

logger = logging.getLogger("feedback")
# Only so the hooks' lines show up in this example's output; your application configures logging.
_handler = logging.StreamHandler(sys.stdout)
_handler.setFormatter(logging.Formatter("    [%(name)s] %(message)s"))
logger.addHandler(_handler)
logger.setLevel(logging.INFO)

Hook = Callable[..., Any]


def audit_hook(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
    """Log each feedback: rating and comment length (the comment itself may hold personal data)."""
    feedback = kwargs["feedback"]
    logger.info(
        "session_id=<%s>, rating=<%s>, comment_chars=<%d> | feedback",
        session_id,
        feedback.get("rating"),
        len(feedback.get("comment") or ""),
    )
    return original_func(feedback)


def validation_hook(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
    """Trim comments; refuse a thumbs-down without one (we want to know what went wrong)."""
    feedback = dict(kwargs["feedback"])
    if isinstance(feedback.get("comment"), str):
        feedback["comment"] = feedback["comment"].strip()
    if feedback.get("rating") == "down" and not feedback.get("comment"):
        raise ValueError("a thumbs-down needs a comment")
    return original_func(feedback)


class AlertOnNegative:
    """Raise an alert for every thumbs-down, after it is stored (so a failed write sends nothing)."""

    def __init__(self) -> None:
        self.alerts: list[str] = []

    def __call__(self, original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        stored = original_func(kwargs["feedback"])
        if kwargs["feedback"].get("rating") == "down":
            # In production: notify a team, open a ticket, or publish to SNS (see the AWS hooks example).
            self.alerts.append(session_id)
            logger.warning("session_id=<%s> | thumbs-down: a human should look at this conversation", session_id)
        return stored


class FeedbackAnalytics:
    """Count ratings as they come in."""

    def __init__(self) -> None:
        self.ratings: Counter[str] = Counter()

    def __call__(self, original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        stored = original_func(kwargs["feedback"])
        self.ratings[str(kwargs["feedback"].get("rating"))] += 1
        return stored


def chain(*hooks: Hook) -> Hook:
    """Combine feedback hooks into one; the first runs outermost."""

    def combined(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        def wrap(hook: Hook, inner: Callable[..., Any]) -> Callable[..., Any]:
            return lambda feedback: hook(inner, action, session_id, feedback=feedback)

        call = original_func
        for hook in reversed(hooks):
            call = wrap(hook, call)
        return call(kwargs["feedback"])

    return combined


def main() -> None:
    with mongodb_uri() as uri:
        print_setup(uri, COLLECTION)
        alerts, analytics = AlertOnNegative(), FeedbackAnalytics()
        manager = MongoDBSessionManager(
            session_id=SESSION_ID,
            connection_string=uri,
            database_name=database_name(),
            collection_name=COLLECTION,
            feedback_hook=chain(audit_hook, validation_hook, alerts, analytics),  # `feedbackHook=` works too
        )
        with manager:
            agent = Agent(model=demo_model(), tools=[calculator], session_manager=manager, callback_handler=None)
            prompt = "What is 6 * 7?"
            print(f"user:  {prompt}\nagent: {str(agent(prompt)).strip()}\n")

            feedbacks: list[dict[str, Any]] = [
                {"rating": "up", "comment": "  Quick and correct!  "},
                {"rating": "down", "comment": "I wanted the working shown too."},
                {"rating": None, "comment": "Saving this for later."},
            ]
            for feedback in feedbacks:
                print(f"add_feedback({feedback})")
                stored = manager.add_feedback(feedback)
                print(f"  -> stored {stored['rating']!s:5} {stored['comment']!r} at {stored['created_at']:%H:%M:%S}")

            print("\nRefused, nothing stored:")
            refused: list[dict[str, Any]] = [{"rating": "down", "comment": "   "}, {"rating": "maybe", "comment": "?"}]
            for bad in refused:
                try:
                    manager.add_feedback(bad)
                except SessionValidationError as e:  # the library's own check, run inside the original
                    print(f"  add_feedback({bad}) -> SessionValidationError: {e}")
                except ValueError as e:  # raised by validation_hook
                    print(f"  add_feedback({bad}) -> ValueError from the hook: {e}")

            print(f"\nThis run: ratings {dict(analytics.ratings)}, alerts raised: {len(alerts.alerts)}")

        print("\nA new manager for the same session id reads every stored entry (server timestamps, UTC):")
        with MongoDBSessionManager(
            SESSION_ID, connection_string=uri, database_name=database_name(), collection_name=COLLECTION
        ) as reader:
            entries = reader.get_feedbacks()
            for entry in entries:
                print(f"  {entry['created_at']:%Y-%m-%d %H:%M:%S}  {entry['rating']!s:5} {entry['comment']!r}")
            print(f"{len(entries)} feedback entries stored in session {SESSION_ID!r}.")


if __name__ == "__main__":
    main()
