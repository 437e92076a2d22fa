"""The AWS hooks on a real ``MongoDBSessionManager``: what MongoDB stores and what SNS/SQS (moto) receive.

MongoDB is the server under test (``MONGODB_URI``); AWS is moto's in-process fake, with an SNS topic
subscribed by an SQS queue and an SQS queue for metadata. Each test asserts both sides: the write
and the messages that actually arrive.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from pymongo import MongoClient

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionManagerFactory, SessionValidationError
from mongodb_session_manager.hooks import (
    DeliveryStats,
    FeedbackSNSHook,
    MetadataSQSHook,
    compose_hooks,
)

REGION = "eu-west-1"


class EventId:
    """Compares equal to any event id the hooks generate (32 hex digits)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and len(other) == 32 and all(c in "0123456789abcdef" for c in other)

    def __repr__(self) -> str:
        return "<event id>"


EVENT_ID = EventId()


class AwsQueues:
    """A fresh SNS topic subscribed by a queue, and a metadata queue, in moto; and what arrived."""

    def __init__(self, sns: Any, sqs: Any) -> None:
        self.sns, self.sqs = sns, sqs
        suffix = uuid.uuid4().hex[:10]  # one moto for the module; tests never share a topic or queue
        self.topic_arn: str = sns.create_topic(Name=f"feedback-alerts-{suffix}")["TopicArn"]
        self.feedback_queue: str = sqs.create_queue(QueueName=f"feedback-inbox-{suffix}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.feedback_queue, AttributeNames=["QueueArn"])
        sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "true"},
        )
        self.metadata_queue: str = sqs.create_queue(QueueName=f"metadata-updates-{suffix}")["QueueUrl"]

    def bodies(self, queue_url: str) -> list[dict[str, Any]]:
        """The JSON bodies of every message now in the queue, in arrival order (each received once)."""
        received: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return received
            received.extend(json.loads(message["Body"]) for message in batch)
            self.sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )


@pytest.fixture(scope="module")
def aws_clients() -> Iterator[tuple[Any, Any]]:
    """moto with dummy credentials (no network, no local AWS configuration), once for the module."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_SQS", "AWS_REGION"):
            env.delenv(name, raising=False)
        with mock_aws():
            yield boto3.client("sns", region_name=REGION), boto3.client("sqs", region_name=REGION)


@pytest.fixture
def aws(aws_clients: tuple[Any, Any]) -> AwsQueues:
    """A fresh topic and queues for one test."""
    return AwsQueues(*aws_clients)


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Close hooks and managers made by a test, last made first."""
    made: list[Any] = []

    def track(thing: Any) -> Any:
        made.append(thing)
        return thing

    yield track
    for thing in reversed(made):
        thing.close()


@pytest.fixture
def make_manager(
    mongodb_uri: str, database_name: str, closing: Callable[[Any], Any]
) -> Callable[..., MongoDBSessionManager]:
    def make(session_id: str = "user-42", **kwargs: Any) -> MongoDBSessionManager:
        manager: MongoDBSessionManager = closing(
            MongoDBSessionManager(session_id, connection_string=mongodb_uri, database_name=database_name, **kwargs)
        )
        return manager

    return make


def stored_feedbacks(client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> list[Any]:
    document = client[database_name]["sessions"].find_one({"_id": session_id}, {"feedbacks": 1})
    assert document is not None
    return list(document.get("feedbacks") or [])


# ---------------------------------------------------------------- feedback


def test_feedback_is_stored_then_negative_feedback_is_announced_with_the_server_timestamp(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    alerts = closing(FeedbackSNSHook(aws.topic_arn, context={"app": "support-bot"}))
    manager = make_manager(feedback_hook=alerts)

    entry = manager.add_feedback({"rating": "down", "comment": "Response was incomplete"})
    manager.add_feedback({"rating": "up", "comment": "Thanks!"})
    assert alerts.flush(timeout=10)

    stored = manager.get_feedbacks()
    assert [(f["rating"], f["comment"]) for f in stored] == [("down", "Response was incomplete"), ("up", "Thanks!")]
    assert entry == stored[0]
    assert aws.bodies(aws.feedback_queue) == [
        {
            "type": "session.feedback.added",
            "schema_version": 1,
            "event_id": EVENT_ID,
            "session_id": "user-42",
            "rating": "down",
            "comment": "Response was incomplete",
            "comment_truncated": False,
            "created_at": stored[0]["created_at"].isoformat(),
            "context": {"app": "support-bot"},
        }
    ]
    assert alerts.stats() == DeliveryStats(sent=1, failed=0, dropped=0, pending=0)


def test_refused_feedback_is_neither_stored_nor_announced(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    alerts = closing(FeedbackSNSHook(aws.topic_arn, notify_ratings=("up", "down", None)))
    manager = make_manager(feedback_hook=alerts)

    with pytest.raises(SessionValidationError):
        manager.add_feedback({"rating": "terrible", "comment": "x"})
    assert alerts.flush(timeout=10)
    assert manager.get_feedbacks() == []
    assert aws.bodies(aws.feedback_queue) == []
    assert alerts.stats() == DeliveryStats()


def test_an_audit_hook_composed_with_sns_sees_every_call_and_can_refuse(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    audit_log: list[tuple[str, str, Any]] = []

    def audit(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        feedback = kwargs["feedback"]
        if "@" in feedback.get("comment", ""):
            audit_log.append((action, session_id, "refused"))
            raise SessionValidationError("feedback.comment", "must not contain e-mail addresses")
        result = original_func({**feedback, "comment": feedback.get("comment", "").strip()})
        audit_log.append((action, session_id, result["rating"]))
        return result

    alerts = closing(FeedbackSNSHook(aws.topic_arn))
    manager = make_manager(feedback_hook=compose_hooks(audit, alerts))

    with pytest.raises(SessionValidationError):
        manager.add_feedback({"rating": "down", "comment": "mail me at a@b.example"})
    manager.add_feedback({"rating": "down", "comment": "   too slow   "})
    assert alerts.flush(timeout=10)

    assert audit_log == [("add", "user-42", "refused"), ("add", "user-42", "down")]
    assert [f["comment"] for f in manager.get_feedbacks()] == ["too slow"]
    assert [(b["rating"], b["comment"]) for b in aws.bodies(aws.feedback_queue)] == [("down", "too slow")]


def test_add_feedback_does_not_wait_for_a_blocked_sns_client(
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    release, entered = threading.Event(), threading.Event()
    published: list[dict[str, Any]] = []

    class BlockedSNS:
        def publish(self, **params: Any) -> dict[str, Any]:
            entered.set()
            release.wait(30)
            published.append(params)
            return {"MessageId": "1"}

    alerts = FeedbackSNSHook("arn:aws:sns:eu-west-1:123456789012:alerts", sns_client=BlockedSNS())
    closing(alerts)
    manager = make_manager(feedback_hook=alerts)
    try:
        entry = manager.add_feedback({"rating": "down", "comment": "stuck?"})
        # add_feedback has returned the stored entry although the publish has not finished.
        assert published == []
        assert [f["comment"] for f in stored_feedbacks(mongo_client, database_name, "user-42")] == ["stuck?"]
        assert entry["comment"] == "stuck?"
        assert entered.wait(10)
        assert alerts.stats().pending == 1
    finally:
        release.set()
    assert alerts.flush(timeout=10)
    assert len(published) == 1 and alerts.stats().sent == 1


def test_feedback_is_stored_when_the_topic_does_not_exist(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    alerts = closing(FeedbackSNSHook(aws.topic_arn + "-gone"))
    manager = make_manager(feedback_hook=alerts)
    entry = manager.add_feedback({"rating": "down", "comment": "nobody hears this"})
    assert alerts.flush(timeout=10)
    assert manager.get_feedbacks() == [entry]
    assert alerts.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)


def test_synchronous_mode_has_sent_when_add_feedback_returns(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    alerts = closing(FeedbackSNSHook(aws.topic_arn, synchronous=True))
    manager = make_manager(feedback_hook=alerts)
    manager.add_feedback({"rating": "down", "comment": "lambda"})
    assert [b["comment"] for b in aws.bodies(aws.feedback_queue)] == ["lambda"]  # no flush
    assert alerts.stats() == DeliveryStats(sent=1, failed=0, dropped=0, pending=0)


# ---------------------------------------------------------------- metadata


def test_metadata_updates_and_deletes_propagate_filtered(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    updates = closing(MetadataSQSHook(aws.metadata_queue, metadata_fields=["status", "agent_state", "priority"]))
    manager = make_manager(metadata_hook=updates)

    manager.update_metadata({"status": "processing", "agent_state": "thinking", "internal_field": "not propagated"})
    manager.update_metadata({"internal_field": "still not"})
    manager.delete_metadata(["agent_state", "internal_field"])
    assert manager.get_metadata() == {"status": "processing"}
    assert updates.flush(timeout=10)

    bodies = aws.bodies(aws.metadata_queue)
    assert [(b["session_id"], b["operation"], b["updated"], b["deleted"]) for b in bodies] == [
        ("user-42", "update", {"status": "processing", "agent_state": "thinking"}, []),
        ("user-42", "delete", {}, ["agent_state"]),
    ]
    assert updates.stats() == DeliveryStats(sent=2, failed=0, dropped=0, pending=0)


def test_the_metadata_tool_goes_through_the_hook_and_refusals_send_nothing(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    updates = closing(MetadataSQSHook(aws.metadata_queue, synchronous=True))
    manager = make_manager(metadata_hook=updates)
    tool = manager.get_metadata_tool()

    assert tool(action="set", metadata={"language": "en"})["status"] == "success"
    assert tool(action="set", metadata={"$bad": 1})["status"] == "error"
    assert tool(action="delete", keys=["language"])["status"] == "success"
    with pytest.raises(SessionValidationError):
        manager.update_metadata({"a.b": 1})

    bodies = aws.bodies(aws.metadata_queue)
    assert [(b["operation"], b["updated"], b["deleted"]) for b in bodies] == [
        ("update", {"language": "en"}, []),
        ("delete", {}, ["language"]),
    ]
    assert manager.get_metadata() == {}


def test_an_audit_hook_composed_with_sqs_and_a_missing_queue(
    aws: AwsQueues,
    make_manager: Callable[..., MongoDBSessionManager],
    closing: Callable[[Any], Any],
) -> None:
    seen: list[str] = []

    def audit(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        seen.append(action)
        return original_func(*kwargs.values())

    gone = closing(MetadataSQSHook(aws.metadata_queue + "-gone"))
    manager = make_manager(metadata_hook=compose_hooks(audit, gone))
    manager.update_metadata({"status": "x"})
    manager.delete_metadata(["status"])
    assert manager.get_metadata() == {}
    assert gone.flush(timeout=10)
    assert seen == ["update", "delete", "get"]
    assert gone.stats() == DeliveryStats(sent=0, failed=2, dropped=0, pending=0)


def test_one_pair_of_hooks_serves_every_manager_of_a_factory(
    aws: AwsQueues,
    mongodb_uri: str,
    database_name: str,
    closing: Callable[[Any], Any],
) -> None:
    alerts = closing(FeedbackSNSHook(aws.topic_arn))
    updates = closing(MetadataSQSHook(aws.metadata_queue))
    factory = closing(
        MongoDBSessionManagerFactory(
            mongodb_uri, database_name=database_name, metadata_hook=updates, feedback_hook=alerts
        )
    )
    for session_id in ("alice", "bob"):
        manager = closing(factory.create_session_manager(session_id))
        manager.update_metadata({"status": f"{session_id} busy"})
        manager.add_feedback({"rating": "down", "comment": f"{session_id} unhappy"})
    assert alerts.flush(timeout=10) and updates.flush(timeout=10)

    assert sorted((b["session_id"], b["comment"]) for b in aws.bodies(aws.feedback_queue)) == [
        ("alice", "alice unhappy"),
        ("bob", "bob unhappy"),
    ]
    assert sorted((b["session_id"], b["updated"]["status"]) for b in aws.bodies(aws.metadata_queue)) == [
        ("alice", "alice busy"),
        ("bob", "bob busy"),
    ]
