"""Pure helpers of the AWS hooks: message formatting, AWS naming rules, log-safe error descriptions.

No I/O and no boto3 here: what the hooks build on the caller's thread before handing a send to
:mod:`._delivery`.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any
from urllib.parse import urlsplit

from ..errors import SessionValidationError

__all__ = [
    "describe_error",
    "encoded_size",
    "is_aws_text",
    "message_group_id",
    "region_from_queue_url",
    "region_from_topic_arn",
    "string_attribute",
    "to_json_value",
]


def describe_error(error: BaseException) -> str:
    """A log-safe description of a send failure: the exception type and AWS error code, no message text.

    botocore's parameter-validation messages quote the offending values, which may be user data.
    """
    response = getattr(error, "response", None)
    code = None
    if isinstance(response, Mapping):
        details = response.get("Error")
        if isinstance(details, Mapping):
            code = details.get("Code")
    return f"{type(error).__name__}:{code}" if code else type(error).__name__


def encoded_size(value: Any) -> int:
    """The size in bytes of what a send puts on the wire: UTF-8 of every string in ``value``, keys included.

    ``value`` is the keyword arguments of ``publish`` / ``send_message`` (strings, mappings and lists
    of them); anything else counts as its ``str()``. The request's own framing is not counted.
    """
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        return sum(encoded_size(key) + encoded_size(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(encoded_size(item) for item in value)
    if isinstance(value, bytes | bytearray):
        return len(value)
    return encoded_size(str(value))


def to_json_value(value: Any) -> Any:
    """Convert a metadata or context value to something ``json.dumps`` writes as standard JSON.

    Datetimes become ISO 8601 strings, ``bytes`` base64 strings, sets and tuples lists, NaN and the
    infinities the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; other types (ObjectId,
    Decimal128, ...) their ``str()``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_value(item) for item in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


# Characters SQS and SNS accept in message attribute values and bodies (XML 1.0 characters).
def is_aws_text(text: str) -> bool:
    """Whether ``text`` contains only characters SNS/SQS accept in a string attribute value."""
    for char in text:
        code = ord(char)
        if code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF:
            continue
        return False
    return bool(text)


def message_group_id(session_id: str) -> str:
    """The FIFO ``MessageGroupId`` for a session: the id itself if AWS accepts it, else a stable hash.

    AWS takes 1 to 128 printable ASCII characters; any other session id maps to ``sha256-<hex>``,
    which still keeps one session's messages in one ordered group.
    """
    if 1 <= len(session_id) <= 128 and all("!" <= char <= "~" for char in session_id):
        return session_id
    return "sha256-" + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def string_attribute(value: str) -> dict[str, str]:
    """An SNS/SQS message attribute of type String."""
    return {"DataType": "String", "StringValue": value}


def region_from_topic_arn(topic_arn: str, field: str = "topic_arn") -> str:
    """Validate an SNS topic ARN (``arn:<partition>:sns:<region>:<account>:<name>``) and return its region.

    Args:
        topic_arn: The ARN.
        field: The argument it came from, named in the error.

    Raises:
        SessionValidationError: It is not an SNS topic ARN.
    """
    parts = topic_arn.split(":") if isinstance(topic_arn, str) else []
    if len(parts) != 6 or parts[0] != "arn" or not parts[1] or parts[2] != "sns" or not all(parts[3:]):
        raise SessionValidationError(
            field, "must be an SNS topic ARN like arn:aws:sns:<region>:<account-id>:<topic-name>", topic_arn
        )
    return parts[3]


def region_from_queue_url(queue_url: str) -> str | None:
    """Validate an SQS queue URL and return the region its host names, if any.

    ``https://sqs.<region>.amazonaws.com/<account>/<name>`` and the legacy
    ``https://<region>.queue.amazonaws.com/...`` name their region; a custom endpoint (LocalStack, a
    VPC endpoint) may not, and then ``None`` is returned (boto3's configured region applies).

    Raises:
        SessionValidationError: It is not an http(s) URL with a ``/<account>/<queue-name>`` path.
    """
    parts = urlsplit(queue_url) if isinstance(queue_url, str) else None
    path = [segment for segment in parts.path.split("/") if segment] if parts else []
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(path) != 2:
        raise SessionValidationError(
            "queue_url",
            "must be an SQS queue URL like https://sqs.<region>.amazonaws.com/<account-id>/<queue-name>",
            queue_url,
        )
    labels = parts.hostname.split(".")
    if len(labels) >= 4 and labels[0] == "sqs" and labels[2] == "amazonaws":
        return labels[1]
    if len(labels) >= 4 and labels[1] == "queue" and labels[2] == "amazonaws":
        return labels[0]
    return None
