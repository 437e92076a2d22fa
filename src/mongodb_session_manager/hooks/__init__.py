"""Ready-made metadata and feedback hooks: AWS SNS and SQS notifications, and hook composition.

Importing this package never needs boto3; only building an AWS client does. Install it with
``pip install "mongodb-session-manager[aws]"``; :func:`is_feedback_sns_hook_available` and
:func:`is_metadata_sqs_hook_available` tell whether it is there.

* :class:`FeedbackSNSHook` (``feedback_hook``): store feedback, then publish a notification to SNS.
* :class:`MetadataSQSHook` (``metadata_hook``): after a metadata update or deletion, send what
  changed to SQS.
* :func:`compose_hooks`: chain these with hooks of your own.

Both AWS hooks deliver on a background thread, through a queue bounded by count and by bytes (or,
with ``synchronous=True``, before returning, waiting at most ``send_timeout``), never raise into the
caller, count what happened in ``stats()``, and offer ``flush(timeout)`` for AWS Lambda handlers and
``close()`` for shutdown.
"""

from ._compose import ComposedHook, Hook, compose_hooks
from ._delivery import AWS_EXTRA_INSTALL, AWSHooksUnavailableError, DeliveryStats
from .feedback_sns_hook import (
    FEEDBACK_MESSAGE_TYPE,
    FeedbackSNSHook,
    create_feedback_sns_hook,
    is_feedback_sns_hook_available,
)
from .metadata_sqs_hook import (
    METADATA_MESSAGE_TYPE,
    MetadataSQSHook,
    create_metadata_sqs_hook,
    is_metadata_sqs_hook_available,
)

__all__ = [
    "AWS_EXTRA_INSTALL",
    "FEEDBACK_MESSAGE_TYPE",
    "METADATA_MESSAGE_TYPE",
    "AWSHooksUnavailableError",
    "ComposedHook",
    "DeliveryStats",
    "FeedbackSNSHook",
    "Hook",
    "MetadataSQSHook",
    "compose_hooks",
    "create_feedback_sns_hook",
    "create_metadata_sqs_hook",
    "is_feedback_sns_hook_available",
    "is_metadata_sqs_hook_available",
]
