"""Off-request-path delivery shared by the AWS hooks: a bounded background worker and lazy boto3 clients.

Nothing here imports boto3 at module level: the package imports without it, and only building a
client (the first time a notification is actually sent with no client injected) needs it.

A :class:`DeliveryWorker` owns one daemon thread and one bounded queue. The hook builds each message
on the caller's thread (cheap, pure) and hands the worker a closure that sends it; the caller never
waits for AWS. A full queue drops the *new* message and counts it; a failed send is logged and
counted; neither is ever raised to the caller, whose write has already happened. In synchronous
mode the closure runs on the caller's thread instead (for AWS Lambda, which freezes the process as
soon as the handler returns), with the same never-raise rule.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import importlib
import logging
import math
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from ..errors import AWSHooksUnavailableError, SessionValidationError

logger = logging.getLogger(__name__)

#: What to install for the AWS hooks (named in the error raised when boto3 is missing).
AWS_EXTRA_INSTALL = 'pip install "mongodb-session-manager[aws]"'

#: Default bound of a hook's queue of unsent messages.
DEFAULT_MAX_QUEUE_SIZE = 1000
#: Default time (seconds) the interpreter waits at exit for a hook's unsent messages.
DEFAULT_EXIT_FLUSH_TIMEOUT = 2.0

# Timeouts and retries for clients we build: a slow AWS endpoint holds up the worker (never the
# caller), but only for so long. Callers who want other settings inject their own client.
_CLIENT_CONFIG = {
    "connect_timeout": 5,
    "read_timeout": 10,
    "retries": {"max_attempts": 3, "mode": "standard"},
}


@dataclass(frozen=True)
class DeliveryStats:
    """Counters of one hook's deliveries since it was created (or since this process was forked).

    Attributes:
        sent: Messages AWS accepted.
        failed: Messages that could not be built or that AWS (or the network) refused; each was logged.
        dropped: Messages never attempted: the queue was full, or the hook was closed.
        pending: Messages queued or being sent right now (always 0 in synchronous mode).
    """

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0


# ---------------------------------------------------------------------------- boto3


def load_boto3() -> ModuleType:
    """Import boto3, or raise :class:`AWSHooksUnavailableError` naming the extra to install."""
    try:
        return importlib.import_module("boto3")
    except ImportError as e:
        raise AWSHooksUnavailableError(f"the AWS hooks need boto3, which is not installed: {AWS_EXTRA_INSTALL}") from e


def boto3_available() -> bool:
    """Whether boto3 can be imported in this environment."""
    try:
        load_boto3()
    except AWSHooksUnavailableError:
        return False
    return True


_build_lock = threading.Lock()
_session: Any = None  # one boto3 session per process for the clients we build (models load once)


def _build_client(service: str, region_name: str | None) -> Any:
    global _session
    boto3 = load_boto3()
    config = importlib.import_module("botocore.config").Config(**_CLIENT_CONFIG)
    # Creating clients from one session is not thread-safe, and boto3's default session may be
    # configured by the application: ours is private and used under a lock. Clients are thread-safe.
    with _build_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, region_name=region_name, config=config)


class ClientSource:
    """An injected boto3 client, or clients built lazily (one per region) and owned by us.

    A client passed in is borrowed: used as is for every region and never closed. Clients we build
    are closed by :meth:`close` and rebuilt in a forked child (their connection pool belongs to the
    parent).
    """

    def __init__(self, service: str, client: Any = None) -> None:
        self.service = service
        self._injected = client
        self._built: dict[str | None, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def owned(self) -> bool:
        """Whether clients are built (and closed) by us rather than injected."""
        return self._injected is None

    def get(self, region_name: str | None) -> Any:
        """The client to use for ``region_name`` (``None``: boto3's configured default region)."""
        if self._injected is not None:
            return self._injected
        if self._pid != os.getpid():
            self._reset_after_fork()
        client = self._built.get(region_name)
        if client is None:
            with self._lock:
                client = self._built.get(region_name)
                if client is None:
                    client = self._built[region_name] = _build_client(self.service, region_name)
        return client

    def close(self) -> None:
        """Close the clients we built (an injected client is left alone)."""
        with self._lock:
            built, self._built = self._built, {}
        for client in built.values():
            close = getattr(client, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # closing is best effort; nothing is lost
                    logger.debug("service=<%s> | closing a client failed", self.service, exc_info=True)

    def _reset_after_fork(self) -> None:
        self._built = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()


# ---------------------------------------------------------------------------- worker


class _Job:
    __slots__ = ("destination", "send", "session_id")

    def __init__(self, session_id: str, destination: str, send: Callable[[], None]) -> None:
        self.session_id = session_id
        self.destination = destination
        self.send = send


_STOP = object()
_IDLE_EXIT_SECONDS = 60.0


class _State:
    """What belongs to one process: the lock, the queue, the thread and the counters.

    A worker thread only ever touches the state it was started with, so replacing the state (in a
    forked child) can never mix two generations of queue and counters.
    """

    __slots__ = ("cond", "dropped", "failed", "pending", "pid", "queue", "sent", "thread")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cond = threading.Condition(threading.Lock())
        self.queue: deque[Any] = deque()
        self.thread: threading.Thread | None = None
        self.sent = self.failed = self.dropped = self.pending = 0


class DeliveryWorker:
    """A daemon thread draining a bounded queue of sends, or inline sends in synchronous mode.

    Args:
        kind: What is delivered, for logs and the thread name (``"sns feedback"``).
        synchronous: Send on the caller's thread instead of the worker.
        max_queue_size: Unsent messages kept at most; beyond it new messages are dropped.
        exit_flush_timeout: Seconds the interpreter waits at exit for unsent messages.
    """

    def __init__(
        self,
        kind: str,
        *,
        synchronous: bool = False,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        exit_flush_timeout: float = DEFAULT_EXIT_FLUSH_TIMEOUT,
    ) -> None:
        if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, int) or max_queue_size < 1:
            raise SessionValidationError("max_queue_size", "must be a positive integer", max_queue_size)
        if (
            isinstance(exit_flush_timeout, bool)
            or not isinstance(exit_flush_timeout, int | float)
            or not exit_flush_timeout >= 0
        ):
            raise SessionValidationError("exit_flush_timeout", "must be a number of seconds >= 0", exit_flush_timeout)
        self.kind = kind
        self.synchronous = bool(synchronous)
        self.max_queue_size = max_queue_size
        self.exit_flush_timeout = float(exit_flush_timeout)
        self._closed = False
        self._state = _State()
        _register(self)

    def _reset_after_fork(self) -> None:
        """Start afresh in a forked child: the parent's queued messages are the parent's to send."""
        self._state = _State()

    def _current(self) -> _State:
        # A forked child inherits the parent's queue and a thread object whose thread does not exist
        # here. The at-fork handler replaces the state; checking the process id is the fallback.
        state = self._state
        if state.pid != os.getpid():
            state = self._state = _State()
        return state

    # ------------------------------------------------------------------ submitting

    def submit(self, session_id: str, destination: str, send: Callable[[], None]) -> None:
        """Deliver ``send()`` off the request path (or now, in synchronous mode). Never raises.

        Args:
            session_id: The session the message is about (for logs).
            destination: Topic ARN or queue URL (for logs).
            send: Sends the message; any exception it raises counts as a failed delivery.
        """
        state = self._current()
        if self.synchronous and not self._closed:
            ok = self._execute(_Job(session_id, destination, send))
            with state.cond:
                if ok:
                    state.sent += 1
                else:
                    state.failed += 1
            return
        with state.cond:
            if self._closed:
                reason: str | None = "hook closed"
            elif len(state.queue) >= self.max_queue_size:
                reason = "queue full"
            else:
                reason = None
                state.queue.append(_Job(session_id, destination, send))
                state.pending += 1
                self._ensure_thread(state)
                state.cond.notify_all()
            if reason is not None:
                state.dropped += 1
        if reason is not None:
            logger.warning(
                "session_id=<%s>, destination=<%s>, max_queue_size=<%d> | %s notification dropped: %s",
                session_id,
                destination,
                self.max_queue_size,
                self.kind,
                reason,
            )

    def record_failure(self, session_id: str, destination: str, error: BaseException) -> None:
        """Count and log a message that could not even be built (so was never submitted)."""
        state = self._current()
        with state.cond:
            state.failed += 1
        logger.warning(
            "session_id=<%s>, destination=<%s>, error=<%s> | %s notification could not be built; it is lost",
            session_id,
            destination,
            describe_error(error),
            self.kind,
        )
        logger.debug("session_id=<%s> | %s failure detail", session_id, self.kind, exc_info=error)

    def _ensure_thread(self, state: _State) -> None:
        # Called with state.cond held. Also restarts a worker thread that died.
        if state.thread is not None and state.thread.is_alive():
            return
        state.thread = threading.Thread(
            target=self._run, args=(state,), name=f"msm-{self.kind.replace(' ', '-')}", daemon=True
        )
        state.thread.start()

    # ------------------------------------------------------------------ the worker thread

    def _run(self, state: _State) -> None:
        cond = state.cond
        while True:
            with cond:
                while not state.queue:
                    # An idle thread ends (the next message starts another), so a hook that is
                    # dropped without close() does not keep a thread, and itself, alive for ever.
                    if not cond.wait(_IDLE_EXIT_SECONDS) and not state.queue:
                        if state.thread is threading.current_thread():
                            state.thread = None
                        return
                job = state.queue.popleft()
            if job is _STOP:
                return
            ok = self._execute(job)
            with cond:
                if ok:
                    state.sent += 1
                else:
                    state.failed += 1
                state.pending -= 1
                cond.notify_all()

    def _execute(self, job: _Job) -> bool:
        try:
            job.send()
        except Exception as e:
            logger.warning(
                "session_id=<%s>, destination=<%s>, error=<%s> | %s notification failed; it is lost",
                job.session_id,
                job.destination,
                describe_error(e),
                self.kind,
            )
            logger.debug("session_id=<%s> | %s failure detail", job.session_id, self.kind, exc_info=True)
            return False
        logger.debug(
            "session_id=<%s>, destination=<%s> | %s notification sent", job.session_id, job.destination, self.kind
        )
        return True

    # ------------------------------------------------------------------ control

    def stats(self) -> DeliveryStats:
        """The current counters."""
        state = self._current()
        with state.cond:
            return DeliveryStats(sent=state.sent, failed=state.failed, dropped=state.dropped, pending=state.pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted message is sent or has failed.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            ``True`` if nothing is pending any more, ``False`` if the timeout ran out first.
        """
        state = self._current()
        with state.cond:
            return state.cond.wait_for(lambda: state.pending == 0, timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush (up to ``timeout``), then stop the worker; later messages are dropped.

        Messages still queued when the timeout runs out are dropped and counted; one being sent at
        that moment is left to finish on the daemon thread.

        Returns:
            ``True`` if everything submitted was delivered (or failed) before closing.
        """
        flushed = self.flush(timeout)
        state = self._current()
        with state.cond:
            if self._closed:
                return flushed
            self._closed = True
            discarded = len(state.queue)
            state.queue.clear()
            state.dropped += discarded
            state.pending -= discarded
            if state.thread is not None and state.thread.is_alive():
                state.queue.append(_STOP)
                state.cond.notify_all()
        if discarded:
            logger.warning(
                "count=<%d> | %s notifications dropped: hook closed before they were sent", discarded, self.kind
            )
        _unregister(self)
        return flushed

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


# ---------------------------------------------------------------------------- process-wide bookkeeping

_workers: weakref.WeakSet[DeliveryWorker] = weakref.WeakSet()
_workers_lock = threading.Lock()


def _register(worker: DeliveryWorker) -> None:
    with _workers_lock:
        _workers.add(worker)


def _unregister(worker: DeliveryWorker) -> None:
    with _workers_lock:
        _workers.discard(worker)


def _after_fork_in_child() -> None:
    # Runs in the child's only thread, right after fork: locks held by parent threads that do not
    # exist here must not be inherited, nor the parent's queued messages (the parent sends them).
    global _workers_lock, _build_lock, _session
    _workers_lock = threading.Lock()
    _build_lock = threading.Lock()
    _session = None
    for worker in list(_workers):
        worker._reset_after_fork()


def _flush_at_exit() -> None:
    # Daemon threads still run while atexit handlers do: give unsent messages a bounded chance.
    for worker in list(_workers):
        if worker.closed or worker.synchronous:
            continue
        if not worker.flush(worker.exit_flush_timeout):
            logger.warning(
                "pending=<%d> | interpreter exiting with %s notifications unsent", worker.stats().pending, worker.kind
            )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)


# ---------------------------------------------------------------------------- pure helpers


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
