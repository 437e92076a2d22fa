"""The AWS hooks without MongoDB: message building, composition, the delivery worker, and SNS/SQS via moto.

Where AWS is involved it is moto's in-process fake (``mock_aws``): a real SNS topic subscribed by a
real SQS queue, and an SQS queue for metadata; the tests assert the messages that actually arrive.
Where the point is timing (a blocked or failing AWS), a scripted client is injected and threads are
coordinated with events, never with sleeps or clocks.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from mongodb_session_manager import SessionValidationError
from mongodb_session_manager.hooks import (
    AWS_EXTRA_INSTALL,
    FEEDBACK_MESSAGE_TYPE,
    METADATA_MESSAGE_TYPE,
    AWSHooksUnavailableError,
    ComposedHook,
    DeliveryStats,
    FeedbackSNSHook,
    MetadataSQSHook,
    compose_hooks,
    create_feedback_sns_hook,
    create_metadata_sqs_hook,
    is_feedback_sns_hook_available,
    is_metadata_sqs_hook_available,
)
from mongodb_session_manager.hooks._delivery import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_SEND_TIMEOUT, client_config
from mongodb_session_manager.hooks._format import (
    describe_error,
    encoded_size,
    is_aws_text,
    message_group_id,
    region_from_queue_url,
    region_from_topic_arn,
    to_json_value,
)
from mongodb_session_manager.hooks.feedback_sns_hook import build_feedback_notification, feedback_subject

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"  # not the default region of the environment below: the hooks must derive it
ACCOUNT = "123456789012"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:feedback"
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/metadata"
CREATED_AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
SECRET_COMMENT = "my card number is 4111-1111"  # must never reach a log record at INFO or above
SECRET_VALUE = "s3cr3t-metadata-value"


# ---------------------------------------------------------------- fakes and fixtures


class ScriptedClient:
    """A stand-in for a boto3 SNS/SQS client: records calls, can block until released, can fail."""

    def __init__(self, *, error: Exception | None = None, blocked: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error
        self.entered = threading.Event()  # set when a call has started
        self.release = threading.Event()  # a blocked client waits for this
        if not blocked:
            self.release.set()
        self.blocking_pid = os.getpid()  # a forked child never blocks (it has no one to release it)
        self.completed = 0
        self.timed_out = False
        self.closed = False

    def _call(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(params)
        self.entered.set()
        if os.getpid() == self.blocking_pid and not self.release.wait(30):
            self.timed_out = True
        if self.error is not None:
            raise self.error
        self.completed += 1
        return {"MessageId": f"m-{len(self.calls)}"}

    def publish(self, **params: Any) -> dict[str, Any]:
        return self._call(params)

    def send_message(self, **params: Any) -> dict[str, Any]:
        return self._call(params)

    def close(self) -> None:
        self.closed = True


def throttled() -> ClientError:
    return ClientError({"Error": {"Code": "Throttling", "Message": f"Rate exceeded for {SECRET_COMMENT}"}}, "Publish")


class Feedbacks:
    """The manager's original ``add_feedback``: records what it stores and returns the stored entry."""

    def __init__(self) -> None:
        self.stored: list[dict[str, Any]] = []

    def __call__(self, feedback: dict[str, Any]) -> dict[str, Any]:
        entry = {"rating": feedback.get("rating"), "comment": feedback.get("comment", ""), "created_at": CREATED_AT}
        self.stored.append(entry)
        return entry


class Metadata:
    """The manager's original metadata functions over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def update(self, metadata: dict[str, Any]) -> None:
        self.data.update(metadata)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def get(self) -> dict[str, Any]:
        return dict(self.data)


@pytest.fixture
def hooks() -> Iterator[Callable[[Any], Any]]:
    """Register hooks to close after the test (releasing any blocked scripted client first)."""
    made: list[Any] = []

    def track(hook: Any) -> Any:
        made.append(hook)
        return hook

    yield track
    for hook in made:
        client = hook._clients._injected
        if isinstance(client, ScriptedClient):
            client.release.set()
        hook.close(timeout=10)


@dataclass
class Aws:
    """moto's SNS and SQS. Every topic and queue gets a unique name, so tests never share one."""

    sns: Any
    sqs: Any

    @staticmethod
    def unique(name: str) -> str:
        base, fifo = (name[: -len(".fifo")], ".fifo") if name.endswith(".fifo") else (name, "")
        return f"{base}-{uuid.uuid4().hex[:10]}{fifo}"

    def queue(self, name: str, **attributes: str) -> str:
        url: str = self.sqs.create_queue(QueueName=self.unique(name), Attributes=attributes)["QueueUrl"]
        return url

    def topic(self, name: str, **attributes: str) -> str:
        arn: str = self.sns.create_topic(Name=self.unique(name), Attributes=attributes)["TopicArn"]
        return arn

    def subscribed_queue(self, topic_arn: str, name: str, raw: bool = False) -> str:
        """A queue subscribed to ``topic_arn`` (SNS envelope unless ``raw``)."""
        fifo = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
        url = self.queue(name, **fifo)
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true" if raw else "false"},
        )
        return url

    def drain(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message now in the queue, each received once."""
        received: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
            ).get("Messages", [])
            if not batch:
                return received
            received.extend(batch)
            self.sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    """moto's in-process AWS with dummy credentials; no network, no local AWS configuration read.

    One mock for the module (starting it and building clients is the slow part); tests stay apart
    through unique topic and queue names.
    """
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
            yield Aws(sns=boto3.client("sns", region_name=REGION), sqs=boto3.client("sqs", region_name=REGION))


def notification(message: dict[str, Any]) -> dict[str, Any]:
    """The hook's JSON body inside an SNS-to-SQS envelope."""
    body: dict[str, Any] = json.loads(json.loads(message["Body"])["Message"])
    return body


def loud_records(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged at INFO or above, messages and tracebacks, as one string."""
    handler_text = [
        record.getMessage() + (record.exc_text or "") for record in caplog.records if record.levelno >= logging.INFO
    ]
    return "\n".join(handler_text)


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("arn", "region"),
    [
        ("arn:aws:sns:eu-west-1:123456789012:alerts", "eu-west-1"),
        ("arn:aws-cn:sns:cn-north-1:123456789012:alerts.fifo", "cn-north-1"),
    ],
)
def test_topic_arn_names_its_region(arn: str, region: str) -> None:
    assert region_from_topic_arn(arn) == region


@pytest.mark.parametrize(
    "arn",
    [
        "alerts",
        "arn:aws:sqs:eu-west-1:123456789012:alerts",
        "arn:aws:sns::123456789012:alerts",
        "arn:aws:sns:eu-west-1:1:a:b",
        None,
    ],
)
def test_bad_topic_arn_is_refused_naming_the_field(arn: Any) -> None:
    with pytest.raises(SessionValidationError) as info:
        FeedbackSNSHook(arn, sns_client=ScriptedClient())
    assert info.value.field == "topic_arn"


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/q", "eu-west-1"),
        ("https://eu-west-2.queue.amazonaws.com/123456789012/q", "eu-west-2"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q.fifo", "cn-north-1"),
        ("http://localhost:4566/000000000000/q", None),
    ],
)
def test_queue_url_names_its_region_when_it_can(url: str, region: str | None) -> None:
    assert region_from_queue_url(url) == region


@pytest.mark.parametrize("url", ["metadata", "sqs://x/1/q", "https://sqs.eu-west-1.amazonaws.com/q", 42])
def test_bad_queue_url_is_refused_naming_the_field(url: Any) -> None:
    with pytest.raises(SessionValidationError) as info:
        MetadataSQSHook(url, sqs_client=ScriptedClient())
    assert info.value.field == "queue_url"


def test_values_become_standard_json() -> None:
    value = {
        "when": datetime(2026, 1, 2, tzinfo=UTC),
        "day": date(2026, 1, 2),
        "raw": b"\x00\x01",
        "tags": ("a", "b"),
        "nan": float("nan"),
        "inf": float("-inf"),
        "nested": {1: [{"x": 1.5}]},
        "other": Path("/x"),
    }
    converted = to_json_value(value)
    assert json.loads(json.dumps(converted, allow_nan=False)) == {
        "when": "2026-01-02T00:00:00+00:00",
        "day": "2026-01-02",
        "raw": "AAE=",
        "tags": ["a", "b"],
        "nan": "NaN",
        "inf": "-Infinity",
        "nested": {"1": [{"x": 1.5}]},
        "other": "/x",
    }


def test_subject_is_one_short_line_of_printable_ascii() -> None:
    subject = feedback_subject("down", "sesión\nnext line " + "x" * 200, "[prod] ")
    assert subject.startswith("[prod] Negative feedback on session sesi?n?next line")
    assert len(subject) < 100
    assert all(" " <= char <= "~" for char in subject)


def test_fifo_group_id_is_the_session_or_a_stable_hash() -> None:
    assert message_group_id("user-42") == "user-42"
    hashed = message_group_id("usuario ñ")
    assert hashed.startswith("sha256-") and len(hashed) <= 128
    assert message_group_id("usuario ñ") == hashed != message_group_id("usuario n")
    assert message_group_id("x" * 129).startswith("sha256-")


def test_attribute_text_check() -> None:
    assert is_aws_text("user-42 ñ")
    assert not is_aws_text("bad\x01id")
    assert not is_aws_text("")


def test_error_description_has_type_and_code_but_no_message_text() -> None:
    assert describe_error(throttled()) == "ClientError:Throttling"
    assert describe_error(ValueError(SECRET_COMMENT)) == "ValueError"


def test_feedback_notification_body() -> None:
    entry = {"rating": "down", "comment": "abcdef", "created_at": CREATED_AT}
    body = build_feedback_notification("s1", entry, event_id="e1", max_comment_chars=4, context={"env": "prod"})
    assert body == {
        "type": FEEDBACK_MESSAGE_TYPE,
        "schema_version": 1,
        "event_id": "e1",
        "session_id": "s1",
        "rating": "down",
        "comment": "abcd",
        "comment_truncated": True,
        "created_at": "2026-01-02T03:04:05.678000+00:00",
        "context": {"env": "prod"},
    }
    without = build_feedback_notification("s1", entry, event_id="e2", include_comment=False)
    assert "comment" not in without and "comment_truncated" not in without and "context" not in without


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"notify_ratings": "down"}, "notify_ratings"),
        ({"notify_ratings": ("bad",)}, "notify_ratings"),
        ({"notify_ratings": (True,)}, "notify_ratings"),
        ({"rating_topics": {"up": "not-an-arn"}}, "rating_topics"),
        ({"rating_topics": {"meh": TOPIC_ARN}}, "rating_topics"),
        ({"context": 42}, "context"),
        ({"max_comment_chars": -1}, "max_comment_chars"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"exit_flush_timeout": -1}, "exit_flush_timeout"),
        ({"send_timeout": 0}, "send_timeout"),
        ({"max_queue_bytes": 0}, "max_queue_bytes"),
    ],
)
def test_bad_feedback_hook_options_are_refused(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SessionValidationError) as info:
        FeedbackSNSHook(TOPIC_ARN, sns_client=ScriptedClient(), **options)
    assert info.value.field == field


@pytest.mark.parametrize("fields", ["status", [], [""], [1]])
def test_bad_metadata_fields_are_refused(fields: Any) -> None:
    with pytest.raises(SessionValidationError) as info:
        MetadataSQSHook(QUEUE_URL, fields, sqs_client=ScriptedClient())
    assert info.value.field == "metadata_fields"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"send_timeout": 0}, "send_timeout"),
        ({"send_timeout": -1.5}, "send_timeout"),
        ({"send_timeout": float("nan")}, "send_timeout"),
        ({"send_timeout": float("inf")}, "send_timeout"),
        ({"send_timeout": True}, "send_timeout"),
        ({"send_timeout": "3"}, "send_timeout"),
        ({"max_queue_bytes": 0}, "max_queue_bytes"),
        ({"max_queue_bytes": -1}, "max_queue_bytes"),
        ({"max_queue_bytes": 1.5}, "max_queue_bytes"),
        ({"max_queue_bytes": True}, "max_queue_bytes"),
        ({"max_queue_bytes": "16MiB"}, "max_queue_bytes"),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        lambda **options: FeedbackSNSHook(TOPIC_ARN, sns_client=ScriptedClient(), **options),
        lambda **options: create_feedback_sns_hook(TOPIC_ARN, sns_client=ScriptedClient(), **options),
        lambda **options: MetadataSQSHook(QUEUE_URL, sqs_client=ScriptedClient(), **options),
        lambda **options: create_metadata_sqs_hook(QUEUE_URL, sqs_client=ScriptedClient(), **options),
    ],
    ids=["FeedbackSNSHook", "create_feedback_sns_hook", "MetadataSQSHook", "create_metadata_sqs_hook"],
)
def test_bad_delivery_bounds_are_refused_by_both_hooks_and_their_factories(
    make: Callable[..., Any], options: dict[str, Any], field: str
) -> None:
    with pytest.raises(SessionValidationError) as info:
        make(**options)
    assert info.value.field == field


def test_factories_pass_the_delivery_bounds_on(hooks: Callable[[Any], Any]) -> None:
    feedback = hooks(
        create_feedback_sns_hook(TOPIC_ARN, sns_client=ScriptedClient(), send_timeout=1, max_queue_bytes=10)
    )
    metadata = hooks(create_metadata_sqs_hook(QUEUE_URL, sqs_client=ScriptedClient(), send_timeout=0.5))
    assert feedback.send_timeout == 1.0 and feedback._worker.max_queue_bytes == 10
    assert metadata.send_timeout == 0.5 and metadata._worker.max_queue_bytes == DEFAULT_MAX_QUEUE_BYTES
    assert MetadataSQSHook(QUEUE_URL, sqs_client=ScriptedClient()).send_timeout == DEFAULT_SEND_TIMEOUT


def test_encoded_size_counts_the_utf8_bytes_of_every_string() -> None:
    assert encoded_size({"Message": "é€", "Attributes": {"type": ["ab", "c"]}}) == 7 + 5 + 10 + 4 + 3
    assert encoded_size("\ud800") == 3  # a lone surrogate is counted, not an error
    assert encoded_size({"n": 12}) == 3


def test_factories_build_the_hooks(hooks: Callable[[Any], Any]) -> None:
    assert is_feedback_sns_hook_available() and is_metadata_sqs_hook_available()
    feedback = hooks(create_feedback_sns_hook(TOPIC_ARN, notify_ratings=("up",), sns_client=ScriptedClient()))
    metadata = hooks(create_metadata_sqs_hook(QUEUE_URL, ["status"], sqs_client=ScriptedClient(), synchronous=True))
    assert isinstance(feedback, FeedbackSNSHook) and feedback.topic_for("up") == TOPIC_ARN
    assert feedback.topic_for("down") is None
    assert isinstance(metadata, MetadataSQSHook) and metadata.metadata_fields == {"status"} and metadata.synchronous


# ---------------------------------------------------------------- composition


def test_each_hook_gets_the_next_as_original_and_transformations_flow_inward() -> None:
    seen: list[tuple[str, Any]] = []
    metadata = Metadata()

    def stamp(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        seen.append(("stamp", action))
        if action == "update":
            return original_func({**kwargs["metadata"], "stamped_by": session_id})
        return original_func(*kwargs.values())

    def record(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        seen.append(("record", dict(kwargs)))
        result = original_func(*kwargs.values())
        return {"inner_result": result} if action == "get" else result

    hook = compose_hooks(stamp, None, record)
    assert isinstance(hook, ComposedHook) and hook.hooks == (stamp, record)
    assert hook(metadata.update, "update", "s1", metadata={"a": 1}) is None
    assert metadata.data == {"a": 1, "stamped_by": "s1"}
    assert hook(metadata.delete, "delete", "s1", keys=["a"]) is None
    assert hook(metadata.get, "get", "s1") == {"inner_result": {"stamped_by": "s1"}}
    assert seen == [
        ("stamp", "update"),
        ("record", {"metadata": {"a": 1, "stamped_by": "s1"}}),
        ("stamp", "delete"),
        ("record", {"keys": ["a"]}),
        ("stamp", "get"),
        ("record", {}),
    ]


def test_a_refusing_outer_hook_stops_the_chain() -> None:
    feedbacks = Feedbacks()
    inner_calls: list[str] = []

    def refuse(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        if "spam" in kwargs["feedback"].get("comment", ""):
            raise ValueError("refused")
        return original_func(kwargs["feedback"])

    def inner(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        inner_calls.append(action)
        return original_func(kwargs["feedback"])

    hook = compose_hooks(refuse, inner)
    with pytest.raises(ValueError, match="refused"):
        hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": "spam"})
    assert feedbacks.stored == [] and inner_calls == []
    assert hook(feedbacks, "add", "s1", feedback={"rating": "up", "comment": "fine"})["rating"] == "up"
    assert inner_calls == ["add"] and len(feedbacks.stored) == 1


def test_keyword_calls_and_argument_errors_in_a_chain() -> None:
    metadata = Metadata()

    def by_keyword(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return original_func(metadata={"k": "v"})

    def passthrough(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return original_func(*kwargs.values())

    compose_hooks(by_keyword, passthrough)(metadata.update, "update", "s1", metadata={"ignored": 1})
    assert metadata.data == {"k": "v"}

    def too_many(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return original_func(1, 2)

    with pytest.raises(TypeError, match="at most 1 positional"):
        compose_hooks(too_many, passthrough)(metadata.update, "update", "s1", metadata={})


def test_compose_edge_cases() -> None:
    def single(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return original_func(*kwargs.values())

    assert compose_hooks(None, single) is single
    identity = compose_hooks()
    assert identity(lambda: "original", "get", "s1") == "original"
    with pytest.raises(SessionValidationError) as info:
        compose_hooks(single, "not a hook")  # type: ignore[arg-type]
    assert info.value.field == "hooks"


# ---------------------------------------------------------------- delivery with a scripted client


def test_the_caller_does_not_wait_for_a_blocked_client(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient(blocked=True)
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client))
    feedbacks = Feedbacks()

    result = hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": "slow"})

    # The hook returned the stored entry while the publish cannot have finished: it is still blocked.
    assert result == feedbacks.stored[0]
    assert client.completed == 0
    assert client.entered.wait(10), "the worker never started publishing"
    assert hook.flush(timeout=0) is False
    assert hook.stats() == DeliveryStats(sent=0, failed=0, dropped=0, pending=1)
    client.release.set()
    assert hook.flush(timeout=10) is True
    assert client.completed == 1 and not client.timed_out
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=0, pending=0)


def test_a_full_queue_drops_the_new_message_and_says_so_without_contents(
    hooks: Callable[[Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mongodb_session_manager")
    client = ScriptedClient(blocked=True)
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client, max_queue_size=1))
    metadata = Metadata()

    hook(metadata.update, "update", "s1", metadata={"n": 1})
    assert client.entered.wait(10)  # message 1 is being sent: the queue is empty again
    hook(metadata.update, "update", "s1", metadata={"n": 2})  # queued
    hook(metadata.update, "update", "s1", metadata={"n": 3, "secret": SECRET_VALUE})  # queue full: dropped

    assert metadata.data == {"n": 3, "secret": SECRET_VALUE}  # every write happened
    queued = hook.stats()
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.WARNING
    assert SECRET_VALUE not in loud_records(caplog)

    client.release.set()
    assert hook.flush(timeout=10)
    assert [json.loads(call["MessageBody"])["updated"] for call in client.calls] == [{"n": 1}, {"n": 2}]
    assert queued == DeliveryStats(sent=0, failed=0, dropped=1, pending=2, queued_bytes=encoded_size(client.calls[1]))
    assert hook.stats() == DeliveryStats(sent=2, failed=0, dropped=1, pending=0)


def test_failures_are_counted_and_logged_never_raised(
    hooks: Callable[[Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mongodb_session_manager")
    client = ScriptedClient(error=throttled())
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client))
    feedbacks = Feedbacks()

    result = hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": SECRET_COMMENT})
    assert result["comment"] == SECRET_COMMENT
    assert hook.flush(timeout=10)
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "session_id=<s1>" in warnings_logged[0].getMessage()
    assert "ClientError:Throttling" in warnings_logged[0].getMessage()
    assert SECRET_COMMENT not in loud_records(caplog)


def test_synchronous_mode_sends_before_returning_and_still_never_raises(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient()
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client, synchronous=True))
    metadata = Metadata()

    hook(metadata.update, "update", "s1", metadata={"status": "busy"})
    assert len(client.calls) == 1 and client.completed == 1  # no flush needed
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=0, pending=0)

    client.error = throttled()
    hook(metadata.delete, "delete", "s1", keys=["status"])
    assert metadata.data == {}
    assert hook.stats() == DeliveryStats(sent=1, failed=1, dropped=0, pending=0)
    assert hook.flush(timeout=0) is True


def test_a_failed_write_sends_nothing(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient()
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client, synchronous=True))

    def refused(feedback: dict[str, Any]) -> Any:
        raise SessionValidationError("feedback.rating", "must be 'up', 'down' or None")

    with pytest.raises(SessionValidationError):
        hook(refused, "add", "s1", feedback={"rating": "meh"})
    assert client.calls == [] and hook.stats() == DeliveryStats()


def test_context_is_sent_and_a_failing_context_counts_as_failed(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient()
    calls: list[str] = []

    def context(session_id: str) -> dict[str, Any]:
        calls.append(session_id)
        if session_id == "broken":
            raise RuntimeError("no request context")
        return {"viewer": f"https://support.example/sessions/{session_id}"}

    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client, context=context, synchronous=True))
    feedbacks = Feedbacks()
    hook(feedbacks, "add", "s1", feedback={"rating": "down"})
    hook(feedbacks, "add", "broken", feedback={"rating": "down"})
    assert len(feedbacks.stored) == 2 and calls == ["s1", "broken"]
    assert [json.loads(call["Message"])["context"] for call in client.calls] == [
        {"viewer": "https://support.example/sessions/s1"}
    ]
    assert hook.stats() == DeliveryStats(sent=1, failed=1, dropped=0, pending=0)


def test_a_fixed_context_is_copied_when_the_hook_is_made(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient()
    context = {"env": "prod"}
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client, context=context, synchronous=True))
    context["env"] = "changed later"
    hook(Feedbacks(), "add", "s1", feedback={"rating": "down"})
    assert json.loads(client.calls[0]["Message"])["context"] == {"env": "prod"}


def test_other_actions_pass_through(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient()
    feedback_hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client, synchronous=True))
    metadata_hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client, synchronous=True))
    metadata = Metadata()
    metadata.update({"a": 1})
    assert metadata_hook(metadata.get, "get", "s1") == {"a": 1}
    assert feedback_hook(metadata.get, "get", "s1") == {"a": 1}  # a feedback hook used for metadata
    assert client.calls == []


def test_close_flushes_then_drops_later_messages_and_leaves_an_injected_client_open(
    hooks: Callable[[Any], Any],
) -> None:
    client = ScriptedClient()
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client))
    feedbacks = Feedbacks()
    hook(feedbacks, "add", "s1", feedback={"rating": "down"})
    assert hook.close(timeout=10) is True
    assert hook.closed and len(client.calls) == 1

    hook(feedbacks, "add", "s1", feedback={"rating": "down"})
    assert len(feedbacks.stored) == 2 and len(client.calls) == 1
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=1, pending=0)
    assert not client.closed


def test_close_with_a_blocked_client_drops_what_is_still_queued(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient(blocked=True)
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client))
    metadata = Metadata()
    hook(metadata.update, "update", "s1", metadata={"n": 1})
    assert client.entered.wait(10)
    hook(metadata.update, "update", "s1", metadata={"n": 2})
    assert hook.close(timeout=0) is False
    assert hook.stats() == DeliveryStats(sent=0, failed=0, dropped=1, pending=1)  # message 1 still in flight
    client.release.set()
    assert hook.flush(timeout=10)
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=1, pending=0)


def test_a_worker_from_another_process_id_starts_afresh(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient(blocked=True)
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client))
    metadata = Metadata()
    hook(metadata.update, "update", "s1", metadata={"n": 1})
    assert client.entered.wait(10)
    hook(metadata.update, "update", "s1", metadata={"n": 2})
    assert hook.stats().pending == 2

    hook._worker._state.pid = -1  # as if this object had been inherited through a fork
    client.blocking_pid = -1  # ...and the client does not block in "this" process
    assert hook.stats() == DeliveryStats()  # the parent's queue and counters are not ours
    hook(metadata.update, "update", "s1", metadata={"n": 3})
    assert hook.flush(timeout=10)
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=0, pending=0)
    assert json.loads(client.calls[-1]["MessageBody"])["updated"] == {"n": 3}
    client.release.set()


def test_a_forked_child_gets_its_own_worker(hooks: Callable[[Any], Any]) -> None:
    client = ScriptedClient(blocked=True)
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client))
    feedbacks = Feedbacks()
    hook(feedbacks, "add", "parent", feedback={"rating": "down", "comment": "one"})
    assert client.entered.wait(10)  # the parent's worker thread is busy...
    hook(feedbacks, "add", "parent", feedback={"rating": "down", "comment": "two"})  # ...and one is queued

    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork in a threaded process
        pid = os.fork()
    if pid == 0:  # the child: report and leave without running any pytest machinery
        code = 1
        try:
            os.close(read_end)
            before = hook.stats()
            calls_before = len(client.calls)
            hook(Feedbacks(), "add", "child", feedback={"rating": "down", "comment": "three"})
            flushed = hook.flush(timeout=10)
            report = {
                "before": before.__dict__,
                "flushed": flushed,
                "after": hook.stats().__dict__,
                "sent_in_child": [json.loads(c["Message"])["comment"] for c in client.calls[calls_before:]],
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {
        "before": {"sent": 0, "failed": 0, "dropped": 0, "pending": 0, "queued_bytes": 0},  # nothing inherited
        "flushed": True,
        "after": {"sent": 1, "failed": 0, "dropped": 0, "pending": 0, "queued_bytes": 0},
        "sent_in_child": ["three"],
    }
    client.release.set()
    assert hook.flush(timeout=10)
    assert hook.stats() == DeliveryStats(sent=2, failed=0, dropped=0, pending=0)


def test_an_idle_worker_thread_ends_and_the_next_message_starts_another(
    hooks: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mongodb_session_manager.hooks import _delivery

    monkeypatch.setattr(_delivery, "_IDLE_EXIT_SECONDS", 0.0)  # idle at once
    client = ScriptedClient()
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client))
    metadata = Metadata()
    hook(metadata.update, "update", "s1", metadata={"n": 1})
    first = hook._worker._state.thread
    assert first is not None and hook.flush(timeout=10)
    first.join(10)
    assert not first.is_alive() and hook._worker._state.thread is None
    hook(metadata.update, "update", "s1", metadata={"n": 2})
    assert hook.flush(timeout=10)
    assert [json.loads(c["MessageBody"])["updated"] for c in client.calls] == [{"n": 1}, {"n": 2}]
    assert hook.stats() == DeliveryStats(sent=2, failed=0, dropped=0, pending=0)


# ---------------------------------------------------------------- delivery bounds: time and bytes


def wait_for_late_sends(hook: Any) -> bool:
    """Wait until no synchronous send abandoned at its send_timeout is still running."""
    state = hook._worker._state
    with state.cond:
        result: bool = state.cond.wait_for(lambda: state.late == 0, 10)
    return result


@pytest.mark.parametrize("late_outcome", ["sent", "failed"])
def test_a_synchronous_caller_waits_at_most_send_timeout_and_a_late_send_is_not_counted_twice(
    hooks: Callable[[Any], Any], caplog: pytest.LogCaptureFixture, late_outcome: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="mongodb_session_manager")
    client = ScriptedClient(blocked=True)  # hangs until released (30 s at most)
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client, synchronous=True, send_timeout=0.2))
    metadata = Metadata()

    hook(metadata.update, "update", "s1", metadata={"status": SECRET_VALUE})

    # The call has returned while the send it started is still blocked: the caller did not wait for it.
    assert metadata.data == {"status": SECRET_VALUE}
    assert client.entered.is_set() and client.completed == 0
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)
    assert hook.flush(timeout=0) is True  # already counted: nothing is pending
    timeouts = [r for r in caplog.records if "send_timeout=<0.2>" in r.getMessage()]
    assert len(timeouts) == 1 and timeouts[0].levelno == logging.WARNING
    assert "session_id=<s1>" in timeouts[0].getMessage()

    if late_outcome == "failed":
        client.error = throttled()
    client.release.set()
    assert wait_for_late_sends(hook)
    assert len(client.calls) == 1 and not client.timed_out
    assert client.completed == (1 if late_outcome == "sent" else 0)
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)  # counted once, as failed
    finished = [r for r in caplog.records if "finished after its send_timeout" in r.getMessage()]
    assert len(finished) == 1 and finished[0].levelno == logging.DEBUG
    assert ("outcome=<sent>" if late_outcome == "sent" else "outcome=<ClientError:Throttling>") in (
        finished[0].getMessage()
    )
    assert SECRET_VALUE not in loud_records(caplog) and SECRET_COMMENT not in loud_records(caplog)


def test_sends_left_running_past_send_timeout_are_bounded_like_the_queue(
    hooks: Callable[[Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mongodb_session_manager")
    client = ScriptedClient(blocked=True)
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client, synchronous=True, send_timeout=1, max_queue_size=1))
    feedbacks = Feedbacks()

    hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": "one"})  # times out, keeps running
    hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": SECRET_COMMENT})  # no room: dropped
    assert len(feedbacks.stored) == 2 and len(client.calls) == 1
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=1, pending=0)
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and "past send_timeout" in drops[0].getMessage()
    assert SECRET_COMMENT not in loud_records(caplog)

    client.release.set()
    assert wait_for_late_sends(hook)
    hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": "three"})  # room again
    assert [json.loads(call["Message"])["comment"] for call in client.calls] == ["one", "three"]
    assert hook.stats() == DeliveryStats(sent=1, failed=1, dropped=1, pending=0)


def test_close_does_not_close_a_built_client_under_a_late_send(
    hooks: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mongodb_session_manager.hooks import _delivery

    client = ScriptedClient(blocked=True)
    built: list[tuple[str, str | None, float]] = []

    def build(service: str, region_name: str | None, send_timeout: float) -> ScriptedClient:
        built.append((service, region_name, send_timeout))
        return client

    monkeypatch.setattr(_delivery, "_build_client", build)
    hook = hooks(MetadataSQSHook(QUEUE_URL, synchronous=True, send_timeout=0.2))  # the client is ours
    hook(Metadata().update, "update", "s1", metadata={"status": "x"})
    assert built == [("sqs", REGION, 0.2)] and client.completed == 0
    assert hook.close(timeout=0) is True and not client.closed  # the late send still uses it
    client.release.set()
    assert wait_for_late_sends(hook)
    assert hook.close() is True and client.closed
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)


def test_clients_we_build_give_up_within_about_send_timeout(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    assert client_config(3.0) == {
        "connect_timeout": 0.75,
        "read_timeout": 0.75,
        "retries": {"total_max_attempts": 2, "mode": "standard"},
    }
    hook = hooks(FeedbackSNSHook(aws.topic("feedback"), send_timeout=2))
    config = hook._clients.get(REGION).meta.config
    assert (config.connect_timeout, config.read_timeout) == (0.5, 0.5)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}
    # every attempt may wait for the connection and then for the answer: about send_timeout in all
    assert config.retries["total_max_attempts"] * (config.connect_timeout + config.read_timeout) == 2


def test_the_queue_is_bounded_by_bytes_too(hooks: Callable[[Any], Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mongodb_session_manager")
    client = ScriptedClient(blocked=True)
    hook = hooks(MetadataSQSHook(QUEUE_URL, sqs_client=client, max_queue_size=100, max_queue_bytes=25_000))
    metadata = Metadata()
    big = "x" * 10_000  # each message is a little over 10,000 bytes

    hook(metadata.update, "update", "s1", metadata={"n": 1, "v": big})
    assert client.entered.wait(10)  # message 1 is being sent: it no longer counts against the queue
    hook(metadata.update, "update", "s1", metadata={"n": 2, "v": big})  # queued
    hook(metadata.update, "update", "s1", metadata={"n": 3, "v": big})  # queued: about 20,600 bytes in all
    hook(metadata.update, "update", "s1", metadata={"n": 4, "v": big, "secret": SECRET_VALUE})  # past 25,000
    hook(metadata.update, "update", "s1", metadata={"n": 5})  # small: still fits
    queued = hook.stats()

    assert metadata.data == {"n": 5, "v": big, "secret": SECRET_VALUE}  # every write happened
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.WARNING and "queue full" in drops[0].getMessage()
    assert "max_queue_bytes=<25000>" in drops[0].getMessage()
    assert SECRET_VALUE not in loud_records(caplog)

    client.release.set()
    assert hook.flush(timeout=10)
    assert [json.loads(call["MessageBody"])["updated"]["n"] for call in client.calls] == [1, 2, 3, 5]
    waiting = sum(encoded_size(call) for call in client.calls[1:])
    assert 20_000 < waiting <= 25_000
    assert queued == DeliveryStats(sent=0, failed=0, dropped=1, pending=4, queued_bytes=waiting)
    assert hook.stats() == DeliveryStats(sent=4, failed=0, dropped=1, pending=0, queued_bytes=0)


def test_a_message_larger_than_max_queue_bytes_is_dropped_even_from_an_empty_queue(
    hooks: Callable[[Any], Any],
) -> None:
    client = ScriptedClient()
    hook = hooks(FeedbackSNSHook(TOPIC_ARN, sns_client=client, max_comment_chars=10_000, max_queue_bytes=2_000))
    feedbacks = Feedbacks()
    hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": "x" * 5_000})
    hook(feedbacks, "add", "s1", feedback={"rating": "down", "comment": "short"})
    assert hook.flush(timeout=10)
    assert len(feedbacks.stored) == 2
    assert [json.loads(call["Message"])["comment"] for call in client.calls] == ["short"]
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=1, pending=0)


# ---------------------------------------------------------------- SNS and SQS (moto)


def test_negative_feedback_reaches_a_subscribed_queue_and_positive_does_not(
    aws: Aws, hooks: Callable[[Any], Any]
) -> None:
    topic = aws.topic("feedback")
    queue = aws.subscribed_queue(topic, "feedback-inbox")
    hook = hooks(FeedbackSNSHook(topic, context={"app": "support-bot"}))  # client built here, region from ARN
    feedbacks = Feedbacks()

    hook(feedbacks, "add", "user-42", feedback={"rating": "down", "comment": "Response was incomplete"})
    hook(feedbacks, "add", "user-42", feedback={"rating": "up", "comment": "thanks"})
    hook(feedbacks, "add", "user-42", feedback={"rating": None, "comment": "meh"})
    assert hook.flush(timeout=10)

    messages = aws.drain(queue)
    assert len(messages) == 1
    body = notification(messages[0])
    assert body == {
        "type": FEEDBACK_MESSAGE_TYPE,
        "schema_version": 1,
        "event_id": body["event_id"],
        "session_id": "user-42",
        "rating": "down",
        "comment": "Response was incomplete",
        "comment_truncated": False,
        "created_at": CREATED_AT.isoformat(),
        "context": {"app": "support-bot"},
    }
    envelope = json.loads(messages[0]["Body"])
    assert envelope["Subject"] == "Negative feedback on session user-42"
    assert {name: attr["Value"] for name, attr in envelope["MessageAttributes"].items()} == {
        "type": FEEDBACK_MESSAGE_TYPE,
        "rating": "down",
        "session_id": "user-42",
    }
    assert len(feedbacks.stored) == 3
    assert hook.stats() == DeliveryStats(sent=1, failed=0, dropped=0, pending=0)


def test_ratings_can_be_routed_to_different_topics(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    alerts, praise = aws.topic("alerts"), aws.topic("praise")
    alerts_queue = aws.subscribed_queue(alerts, "alerts-inbox", raw=True)
    praise_queue = aws.subscribed_queue(praise, "praise-inbox", raw=True)
    hook = hooks(FeedbackSNSHook(alerts, notify_ratings=("down", None), rating_topics={"up": praise}))
    feedbacks = Feedbacks()
    for rating in ("up", "down", None, "up"):
        hook(feedbacks, "add", "s1", feedback={"rating": rating, "comment": str(rating)})
    assert hook.flush(timeout=10)

    alerts_got = [json.loads(m["Body"]) for m in aws.drain(alerts_queue)]
    praise_got = [json.loads(m["Body"]) for m in aws.drain(praise_queue)]
    assert sorted(str(b["rating"]) for b in alerts_got) == ["None", "down"]
    assert [b["rating"] for b in praise_got] == ["up", "up"]
    assert len({b["event_id"] for b in alerts_got + praise_got}) == 4


def test_long_comments_are_cut_and_can_be_left_out(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    topic = aws.topic("feedback")
    queue = aws.subscribed_queue(topic, "inbox", raw=True)
    cut = hooks(FeedbackSNSHook(topic, max_comment_chars=10))
    silent = hooks(FeedbackSNSHook(topic, include_comment=False))
    cut(Feedbacks(), "add", "s1", feedback={"rating": "down", "comment": "x" * 5000})
    assert cut.flush(timeout=10)
    silent(Feedbacks(), "add", "s2", feedback={"rating": "down", "comment": SECRET_COMMENT})
    assert silent.flush(timeout=10)
    bodies = {b["session_id"]: b for b in (json.loads(m["Body"]) for m in aws.drain(queue))}
    assert bodies["s1"]["comment"] == "x" * 10 and bodies["s1"]["comment_truncated"] is True
    assert "comment" not in bodies["s2"] and SECRET_COMMENT not in json.dumps(bodies["s2"])


def test_a_missing_topic_is_a_counted_failure(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    hook = hooks(FeedbackSNSHook(f"arn:aws:sns:{REGION}:{ACCOUNT}:does-not-exist"))
    feedbacks = Feedbacks()
    assert hook(feedbacks, "add", "s1", feedback={"rating": "down"})["rating"] == "down"
    assert hook.flush(timeout=10)
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)


def test_a_fifo_topic_gets_group_and_deduplication_ids(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    topic = aws.topic("feedback.fifo", FifoTopic="true")
    queue = aws.subscribed_queue(topic, "inbox.fifo", raw=True)
    hook = hooks(FeedbackSNSHook(topic))
    for _ in range(2):  # identical feedback twice: two events, both delivered
        hook(Feedbacks(), "add", "user-42", feedback={"rating": "down", "comment": "same"})
    assert hook.flush(timeout=10)
    messages = aws.drain(queue)
    assert len(messages) == 2
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"user-42"}
    assert hook.stats().sent == 2


def test_metadata_changes_reach_the_queue_filtered_with_deletes(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    queue = aws.queue("metadata")
    hook = hooks(MetadataSQSHook(queue, metadata_fields=["status", "agent_state"]))
    metadata = Metadata()

    hook(metadata.update, "update", "s1", metadata={"status": "processing", "internal_field": SECRET_VALUE})
    hook(metadata.update, "update", "s1", metadata={"internal_field": "x"})  # nothing tracked: no message
    hook(metadata.update, "update", "s1", metadata={"agent_state": {"at": datetime(2026, 1, 2, tzinfo=UTC)}})
    hook(metadata.delete, "delete", "s1", keys=["status", "internal_field", "status"])
    hook(metadata.delete, "delete", "s1", keys=["internal_field"])  # nothing tracked: no message
    assert hook(metadata.get, "get", "s1") == {"agent_state": {"at": datetime(2026, 1, 2, tzinfo=UTC)}}
    assert hook.flush(timeout=10)

    messages = aws.drain(queue)
    bodies = sorted((json.loads(m["Body"]) for m in messages), key=lambda b: b["timestamp"])
    assert [(b["operation"], b["updated"], b["deleted"]) for b in bodies] == [
        ("update", {"status": "processing"}, []),
        ("update", {"agent_state": {"at": "2026-01-02T00:00:00+00:00"}}, []),
        ("delete", {}, ["status"]),
    ]
    for body in bodies:
        assert body["type"] == METADATA_MESSAGE_TYPE and body["schema_version"] == 1 and body["session_id"] == "s1"
        datetime.fromisoformat(body["timestamp"])
    assert SECRET_VALUE not in json.dumps(bodies)
    attributes = sorted(m["MessageAttributes"]["operation"]["StringValue"] for m in messages)
    assert attributes == ["delete", "update", "update"]
    assert {m["MessageAttributes"]["type"]["StringValue"] for m in messages} == {METADATA_MESSAGE_TYPE}
    assert hook.stats() == DeliveryStats(sent=3, failed=0, dropped=0, pending=0)


def test_all_fields_propagate_without_a_filter(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    queue = aws.queue("metadata")
    hook = hooks(MetadataSQSHook(queue, synchronous=True))
    metadata = Metadata()
    hook(metadata.update, "update", "s1", metadata={"a": 1, "b": b"\x01"})
    hook(metadata.delete, "delete", "s1", keys=["a", "b"])
    bodies = [json.loads(m["Body"]) for m in aws.drain(queue)]
    assert sorted((b["operation"], json.dumps(b["updated"]), b["deleted"]) for b in bodies) == [
        ("delete", "{}", ["a", "b"]),
        ("update", '{"a": 1, "b": "AQ=="}', []),
    ]


def test_a_fifo_queue_keeps_each_session_in_one_group_and_does_not_merge_repeats(
    aws: Aws, hooks: Callable[[Any], Any]
) -> None:
    queue = aws.queue("metadata.fifo", FifoQueue="true")
    hook = hooks(MetadataSQSHook(queue))
    metadata = Metadata()
    for session_id, status in [("s1", "thinking"), ("s1", "idle"), ("s1", "thinking"), ("sesión 2", "idle")]:
        hook(metadata.update, "update", session_id, metadata={"status": status})
    assert hook.flush(timeout=10)

    messages = aws.drain(queue)
    assert len(messages) == 4  # the repeated "thinking" is a new event, not a duplicate
    groups = [m["Attributes"]["MessageGroupId"] for m in messages]
    assert groups.count("s1") == 3 and groups.count(message_group_id("sesión 2")) == 1
    s1 = [json.loads(m["Body"])["updated"]["status"] for m in messages if m["Attributes"]["MessageGroupId"] == "s1"]
    assert s1 == ["thinking", "idle", "thinking"]  # in order within the group
    dedup = {m["Attributes"]["MessageDeduplicationId"] for m in messages}
    assert dedup == {json.loads(m["Body"])["event_id"] for m in messages}


def test_a_missing_queue_is_a_counted_failure(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    hook = hooks(MetadataSQSHook(f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/does-not-exist"))
    metadata = Metadata()
    hook(metadata.update, "update", "s1", metadata={"status": "x"})
    assert metadata.data == {"status": "x"}
    assert hook.flush(timeout=10)
    assert hook.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)


def test_an_explicit_region_overrides_the_one_in_the_url(aws: Aws, hooks: Callable[[Any], Any]) -> None:
    queue = aws.queue("metadata")
    wrong = hooks(MetadataSQSHook(queue, region_name="us-west-2", synchronous=True))
    wrong(Metadata().update, "update", "s1", metadata={"status": "x"})
    assert wrong.stats() == DeliveryStats(sent=0, failed=1, dropped=0, pending=0)  # that queue is not there
    right = hooks(MetadataSQSHook(queue, synchronous=True))
    right(Metadata().update, "update", "s1", metadata={"status": "x"})
    assert right.stats().sent == 1 and len(aws.drain(queue)) == 1


# ---------------------------------------------------------------- in a fresh interpreter

# Starting an interpreter that imports Strands takes seconds, so one run serves two scenarios:
# 1. boto3 and botocore cannot be imported. strands-agents itself requires boto3 (its Bedrock
#    model imports it), so Strands is loaded first; from then on every import of boto3 or botocore
#    fails, as if they were not installed. This proves nothing of ours needs them until an AWS
#    client is actually built.
# 2. The interpreter exits with messages pending: the hooks' exit handler lets a slow one finish
#    and reports one that cannot.
FRESH_INTERPRETER_SCRIPT = f"""
import sys
import strands
for name in ("boto3", "botocore"):
    sys.modules[name] = None

import atexit, threading, time
import mongodb_session_manager
from mongodb_session_manager.hooks import (
    AWSHooksUnavailableError, DeliveryStats, FeedbackSNSHook, MetadataSQSHook,
    create_feedback_sns_hook, create_metadata_sqs_hook,
    is_feedback_sns_hook_available, is_metadata_sqs_hook_available,
)

# 1. without boto3
assert is_feedback_sns_hook_available() is False
assert is_metadata_sqs_hook_available() is False
for make in (lambda: create_feedback_sns_hook({TOPIC_ARN!r}),
             lambda: create_metadata_sqs_hook({QUEUE_URL!r}),
             lambda: FeedbackSNSHook({TOPIC_ARN!r})):
    try:
        make()
    except ImportError as e:
        assert isinstance(e, AWSHooksUnavailableError), type(e)
        assert isinstance(e, mongodb_session_manager.MongoDBSessionError), type(e)
        assert 'pip install "mongodb-session-manager[aws]"' in str(e), str(e)
    else:
        raise AssertionError("no error without boto3")

class Recorder:
    calls = []
    def send_message(self, **params):
        self.calls.append(params)

recorder = Recorder()
hook = MetadataSQSHook({QUEUE_URL!r}, sqs_client=recorder)  # an injected client needs no boto3
hook(lambda metadata: None, "update", "s1", metadata={{"status": "x"}})
assert hook.flush(10) and hook.stats() == DeliveryStats(sent=1) and len(recorder.calls) == 1
print("without boto3: ok", flush=True)

# 2. exit with messages pending
release = threading.Event()

class Slow:
    def publish(self, **params):
        release.wait()
        time.sleep(0.3)  # still sending when the main thread has finished
        print("delivered", flush=True)

class Stuck:
    def publish(self, **params):
        threading.Event().wait()

slow = FeedbackSNSHook({TOPIC_ARN!r}, sns_client=Slow(), exit_flush_timeout=60)
stuck = FeedbackSNSHook({TOPIC_ARN!r}, sns_client=Stuck(), exit_flush_timeout=0)
store = lambda feedback: {{**feedback, "created_at": None}}
slow(store, "add", "s1", feedback={{"rating": "down", "comment": "late"}})
stuck(store, "add", "s2", feedback={{"rating": "down", "comment": "never"}})
atexit.register(release.set)  # runs before the hooks' own exit handler, registered earlier
print("main done", flush=True)
"""


@pytest.fixture(scope="module")
def fresh_interpreter() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER_SCRIPT],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_library_imports_and_explains_itself_without_boto3(
    fresh_interpreter: subprocess.CompletedProcess[str],
) -> None:
    assert fresh_interpreter.returncode == 0, fresh_interpreter.stderr
    assert "without boto3: ok" in fresh_interpreter.stdout.splitlines()
    assert AWS_EXTRA_INSTALL == 'pip install "mongodb-session-manager[aws]"'


def test_pending_messages_get_their_chance_at_interpreter_exit(
    fresh_interpreter: subprocess.CompletedProcess[str],
) -> None:
    assert fresh_interpreter.returncode == 0, fresh_interpreter.stderr
    assert fresh_interpreter.stdout.splitlines()[-2:] == ["main done", "delivered"]
    stderr = fresh_interpreter.stderr
    assert "pending=<1> | interpreter exiting with sns feedback notifications unsent" in stderr
    assert "never" not in stderr and "late" not in stderr


def test_unavailable_error_is_an_import_error_of_ours() -> None:
    error = AWSHooksUnavailableError("x")
    assert isinstance(error, ImportError)
    from mongodb_session_manager import MongoDBSessionError

    assert isinstance(error, MongoDBSessionError)
