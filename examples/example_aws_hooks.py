"""AWS hooks: negative feedback alerts on SNS, metadata changes propagated through SQS.

A short agent conversation stored in MongoDB, with two hooks attached to the session manager:

* ``FeedbackSNSHook`` stores each feedback, then publishes negative feedback to an SNS topic;
* ``MetadataSQSHook`` sends every metadata update or deletion of the fields it tracks to an SQS queue.

Each is composed with a small audit hook of our own, to show how hooks stack. At the end the example
prints the messages that arrived.

By default everything runs offline: AWS is moto's in-process fake (a topic subscribed by a queue,
and a metadata queue), the model is the offline demo model, and MongoDB is ``MONGODB_URI`` or an
embedded local server (see ``examples/_local.py``). With ``AWS_HOOKS_REAL=1`` the hooks talk to real
AWS instead, using your usual AWS credentials and the resources named by ``TOPIC_ARN`` and
``QUEUE_URL``; the example then only sends (it never reads your queue) and reports what was sent.

    uv run python examples/example_aws_hooks.py
    AWS_HOOKS_REAL=1 TOPIC_ARN=arn:aws:sns:... QUEUE_URL=https://sqs... uv run python examples/example_aws_hooks.py
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import OfflineDemoModel, demo_model, describe_database, mongodb_uri
from strands import Agent
from strands_tools import calculator

from mongodb_session_manager import MongoDBSessionManager
from mongodb_session_manager.hooks import FeedbackSNSHook, MetadataSQSHook, compose_hooks

REGION = "eu-west-1"
TRACKED_FIELDS = ["status", "agent_state", "priority"]

logger = logging.getLogger("example_aws_hooks")


@dataclass
class AwsTargets:
    topic_arn: str
    queue_url: str
    # Reads what reached the topic's subscriber queue and the metadata queue (offline mode only).
    read_back: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]] | None


@contextlib.contextmanager
def offline_aws() -> Iterator[AwsTargets]:
    """moto's fake SNS and SQS: a feedback topic with a queue subscribed to it, and a metadata queue."""
    import boto3
    from moto import mock_aws

    # Dummy credentials, so nothing can reach a real account while the fake is active.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID="example", AWS_SECRET_ACCESS_KEY="example", AWS_DEFAULT_REGION=REGION)
    with mock_aws():
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        topic_arn = sns.create_topic(Name="feedback-alerts")["TopicArn"]
        inbox = sqs.create_queue(QueueName="feedback-alerts-inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        # Raw delivery: the queue receives the hook's JSON as is, without SNS's envelope.
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
        metadata_queue = sqs.create_queue(QueueName="metadata-updates")["QueueUrl"]

        def drain(url: str) -> list[dict[str, Any]]:
            bodies: list[dict[str, Any]] = []
            while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                bodies.extend(json.loads(message["Body"]) for message in batch)
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
                )
            return bodies

        yield AwsTargets(topic_arn, metadata_queue, lambda: (drain(inbox), drain(metadata_queue)))


@contextlib.contextmanager
def real_aws() -> Iterator[AwsTargets]:
    """Your own topic and queue, from ``TOPIC_ARN`` and ``QUEUE_URL``."""
    missing = [name for name in ("TOPIC_ARN", "QUEUE_URL") if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"AWS_HOOKS_REAL=1 needs {' and '.join(missing)} in the environment")
    yield AwsTargets(os.environ["TOPIC_ARN"], os.environ["QUEUE_URL"], None)


# ------------------------------------------------------------------ hooks of our own, to compose with


def audit_feedback(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
    """Log who rated what (never the comment) and pass the call on."""
    result = original_func(kwargs["feedback"])
    logger.info("session_id=<%s>, rating=<%s> | feedback stored", session_id, result["rating"])
    return result


def audit_metadata(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
    """Log which metadata operation ran and on which keys (never the values), and pass the call on."""
    keys = sorted(kwargs.get("metadata") or kwargs.get("keys") or [])
    logger.info("session_id=<%s>, action=<%s>, keys=<%s> | metadata", session_id, action, keys)
    return original_func(*kwargs.values())


# ------------------------------------------------------------------ the example


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  [%(levelname)s %(name)s] %(message)s")
    logger.setLevel(logging.INFO)
    real = os.environ.get("AWS_HOOKS_REAL") == "1"
    # Under moto every AWS call is faked, a Bedrock model included: offline mode uses the offline model.
    model = demo_model() if real else OfflineDemoModel()

    with real_aws() if real else offline_aws() as aws, mongodb_uri() as uri:
        print(f"Storage: {describe_database(uri)}")
        print(
            f"AWS:     {'real AWS (AWS_HOOKS_REAL=1)' if real else 'moto, in-process fake (AWS_HOOKS_REAL=1 for real AWS)'}"
        )
        print(f"  feedback alerts -> {aws.topic_arn}")
        print(f"  metadata changes -> {aws.queue_url} (fields {TRACKED_FIELDS})")

        # Create the AWS hooks once per process and share them (with a factory, pass them to it).
        alerts = FeedbackSNSHook(aws.topic_arn, context={"app": "example_aws_hooks", "env": "dev"})
        updates = MetadataSQSHook(aws.queue_url, metadata_fields=TRACKED_FIELDS)

        session_id = f"aws-hooks-{uuid.uuid4().hex[:8]}"
        database = os.environ.get("EXAMPLES_DATABASE") or "examples"
        manager = MongoDBSessionManager(
            session_id,
            connection_string=uri,
            database_name=database,
            # The audit hook runs first and calls the AWS hook as its "original"; the AWS hook stores,
            # then notifies. Notifying hooks go last so they report what was actually written.
            feedback_hook=compose_hooks(audit_feedback, alerts),
            metadata_hook=compose_hooks(audit_metadata, updates),
        )
        with manager:
            agent = Agent(model=model, tools=[calculator], session_manager=manager, callback_handler=None)
            print(f"\nSession {session_id!r}")
            prompt = "We need (17 + 25) * 3 chairs."
            print(f"user:  {prompt}")
            print(f"agent: {str(agent(prompt)).strip()}")

            print("\nMetadata and feedback:")
            manager.update_metadata({"status": "answered", "agent_state": "idle", "internal_note": "not propagated"})
            manager.update_metadata({"internal_note": "changes no tracked field: nothing is sent"})
            manager.delete_metadata(["agent_state"])
            manager.add_feedback({"rating": "up", "comment": "Quick and right."})  # stored, no alert
            manager.add_feedback({"rating": "down", "comment": "Forgot the tables."})  # stored, alert
            print(f"  stored metadata: {manager.get_metadata()}")
            print(f"  stored feedback: {[(f['rating'], f['comment']) for f in manager.get_feedbacks()]}")

            # The writes above returned without waiting for AWS; delivery runs on a background thread.
            # Before a process is frozen or exits (at the end of an AWS Lambda handler, say), flush.
            delivered = alerts.flush(timeout=10) and updates.flush(timeout=10)
            print(f"\nflush: {'everything delivered' if delivered else 'timed out'}")
            print(f"  SNS hook: {alerts.stats()}")
            print(f"  SQS hook: {updates.stats()}")

            if aws.read_back is not None:
                feedback_messages, metadata_messages = aws.read_back()
                print(f"\nArrived at the feedback topic's subscriber queue ({len(feedback_messages)}):")
                for body in feedback_messages:
                    print("  " + json.dumps(body))
                print(f"Arrived at the metadata queue ({len(metadata_messages)}):")
                for body in metadata_messages:
                    print("  " + json.dumps(body))
            else:
                print("\nReal AWS: look at your topic's subscribers and your queue for the messages.")
            manager.delete_session()  # each run uses a new session; leave nothing behind

        alerts.close()
        updates.close()


if __name__ == "__main__":
    main()
