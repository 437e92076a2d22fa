"""Off-request-path delivery shared by the AWS hooks: a bounded background worker and lazy boto3 clients.

Nothing here imports boto3 at module level: the package imports without it, and only building a
client (the first time a notification is actually sent with no client injected) needs it.

A :class:`DeliveryWorker` owns one daemon thread and one queue, bounded by count and by bytes. The
hook builds each message on the caller's thread (cheap, pure) and hands the worker a closure that
sends it, with the message's encoded size; the caller never waits for AWS. A full queue drops the
*new* message and counts it; a failed send is logged and counted; neither is ever raised to the
caller, whose write has already happened.

In synchronous mode (for AWS Lambda, which freezes the process as soon as the handler returns) the
caller waits for the send, but at most ``send_timeout`` seconds: the send runs on a short-lived
daemon thread, and one that has not finished by then counts as failed and is left to finish on its
own, without being counted again. The same never-raise rule applies.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import AWSHooksUnavailableError, SessionValidationError
from ._format import describe_error

logger = logging.getLogger(__name__)

#: What to install for the AWS hooks (named in the error raised when boto3 is missing).
AWS_EXTRA_INSTALL = 'pip install "mongodb-session-manager[aws]"'

#: Default bound of a hook's queue of unsent messages.
DEFAULT_MAX_QUEUE_SIZE = 1000
#: Default bound (bytes) of the encoded size of a hook's queued messages: 16 MiB.
DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024
#: Default time (seconds) one notification may take: what a synchronous caller waits at most.
DEFAULT_SEND_TIMEOUT = 3.0
#: Default time (seconds) the interpreter waits at exit for a hook's unsent messages.
DEFAULT_EXIT_FLUSH_TIMEOUT = 2.0

# Attempts (the first one included) of a client we build: one retry, for throttling and transient errors.
_CLIENT_ATTEMPTS = 2


@dataclass(frozen=True)
class DeliveryStats:
    """Counters of one hook's deliveries since it was created (or since this process was forked).

    Attributes:
        sent: Messages AWS accepted.
        failed: Messages that could not be built, that AWS (or the network) refused, or, in synchronous
            mode, that were not sent within ``send_timeout`` (such a send may still complete later; it
            is not counted again). Each was logged.
        dropped: Messages never attempted: the queue was full (by count or by bytes), the hook was
            closed, or, in synchronous mode, too many earlier sends were still running past their
            ``send_timeout``.
        pending: Messages queued or being sent right now (always 0 in synchronous mode).
        queued_bytes: Encoded size of the messages waiting in the queue, the one being sent excluded
            (always 0 in synchronous mode).
    """

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    queued_bytes: int = 0


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


def client_config(send_timeout: float) -> dict[str, Any]:
    """The botocore ``Config`` settings of the clients we build, derived from ``send_timeout``.

    Two attempts (one retry, for throttling and transient errors), each with connect and read
    timeouts of a quarter of ``send_timeout``, so a call to an AWS endpoint that never answers gives
    up after about ``send_timeout`` seconds (plus botocore's retry backoff, a fraction of a second
    unless AWS asks for more).
    """
    wait = send_timeout / (2 * _CLIENT_ATTEMPTS)
    return {
        "connect_timeout": wait,
        "read_timeout": wait,
        "retries": {"total_max_attempts": _CLIENT_ATTEMPTS, "mode": "standard"},
    }


_build_lock = threading.Lock()
_session: Any = None  # one boto3 session per process for the clients we build (models load once)


def _build_client(service: str, region_name: str | None, send_timeout: float) -> Any:
    global _session
    boto3 = load_boto3()
    config = importlib.import_module("botocore.config").Config(**client_config(send_timeout))
    # Creating clients from one session is not thread-safe, and boto3's default session may be
    # configured by the application: ours is private and used under a lock. Clients are thread-safe.
    with _build_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, region_name=region_name, config=config)


class ClientSource:
    """An injected boto3 client, or clients built lazily (one per region) and owned by us.

    A client passed in is borrowed: used as is for every region and never closed. Clients we build
    get timeouts and retries derived from ``send_timeout`` (see :func:`client_config`), are closed
    by :meth:`close` and are rebuilt in a forked child (their connection pool belongs to the parent).
    """

    def __init__(self, service: str, client: Any = None, *, send_timeout: float = DEFAULT_SEND_TIMEOUT) -> None:
        self.service = service
        self.send_timeout = send_timeout
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
                    client = self._built[region_name] = _build_client(self.service, region_name, self.send_timeout)
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
    __slots__ = ("destination", "send", "session_id", "size")

    def __init__(self, session_id: str, destination: str, send: Callable[[], None], size: int) -> None:
        self.session_id = session_id
        self.destination = destination
        self.send = send
        self.size = size


class _Attempt:
    """One synchronous send, run on its own daemon thread while the caller waits for it (bounded)."""

    __slots__ = ("abandoned", "done", "error", "finished")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.finished = False  # set, with error, under the state's lock
        self.abandoned = False  # the caller stopped waiting: the outcome is already counted
        self.error: BaseException | None = None


_STOP = object()
_IDLE_EXIT_SECONDS = 60.0


class _State:
    """What belongs to one process: the lock, the queue, the thread and the counters.

    A worker thread only ever touches the state it was started with, so replacing the state (in a
    forked child) can never mix two generations of queue and counters.
    """

    __slots__ = (
        "cond",
        "dropped",
        "failed",
        "late",
        "late_bytes",
        "pending",
        "pid",
        "queue",
        "queued_bytes",
        "sent",
        "thread",
    )

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.cond = threading.Condition(threading.Lock())
        self.queue: deque[Any] = deque()
        self.thread: threading.Thread | None = None
        self.sent = self.failed = self.dropped = self.pending = self.queued_bytes = 0
        # Synchronous sends the caller stopped waiting for that are still running, and their size.
        self.late = self.late_bytes = 0


class DeliveryWorker:
    """A daemon thread draining a bounded queue of sends, or bounded inline sends in synchronous mode.

    Args:
        kind: What is delivered, for logs and the thread name (``"sns feedback"``).
        synchronous: Send while the caller waits (at most ``send_timeout``) instead of on the worker.
        max_queue_size: Unsent messages kept at most; beyond it new messages are dropped.
        max_queue_bytes: Encoded bytes of unsent messages kept at most; a message that would take the
            queue past it is dropped.
        send_timeout: Seconds a synchronous caller waits for one send at most.
        exit_flush_timeout: Seconds the interpreter waits at exit for unsent messages.

    Raises:
        SessionValidationError: An option is out of range.
    """

    def __init__(
        self,
        kind: str,
        *,
        synchronous: bool = False,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        exit_flush_timeout: float = DEFAULT_EXIT_FLUSH_TIMEOUT,
    ) -> None:
        _check_positive_int("max_queue_size", max_queue_size)
        _check_positive_int("max_queue_bytes", max_queue_bytes)
        if not _is_seconds(send_timeout) or not 0 < send_timeout <= threading.TIMEOUT_MAX:
            raise SessionValidationError("send_timeout", "must be a finite number of seconds > 0", send_timeout)
        if not _is_seconds(exit_flush_timeout) or not exit_flush_timeout >= 0:
            raise SessionValidationError("exit_flush_timeout", "must be a number of seconds >= 0", exit_flush_timeout)
        self.kind = kind
        self.synchronous = bool(synchronous)
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.send_timeout = float(send_timeout)
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

    def submit(self, session_id: str, destination: str, send: Callable[[], None], *, size: int) -> None:
        """Deliver ``send()`` off the request path (or now, in synchronous mode). Never raises.

        Args:
            session_id: The session the message is about (for logs).
            destination: Topic ARN or queue URL (for logs).
            send: Sends the message; any exception it raises counts as a failed delivery.
            size: Encoded size in bytes of what ``send`` sends (see :func:`encoded_size`), counted
                against ``max_queue_bytes`` while the message waits.
        """
        state = self._current()
        job = _Job(session_id, destination, send, size)
        if self.synchronous and not self._closed:
            self._send_now(state, job)
            return
        with state.cond:
            if self._closed:
                reason: str | None = "hook closed"
            elif len(state.queue) >= self.max_queue_size or state.queued_bytes + size > self.max_queue_bytes:
                reason = "queue full"
            else:
                reason = None
                state.queue.append(job)
                state.pending += 1
                state.queued_bytes += size
                self._ensure_thread(state)
                state.cond.notify_all()
            if reason is not None:
                state.dropped += 1
        if reason is not None:
            self._log_dropped(job, reason)

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

    # ------------------------------------------------------------------ synchronous mode

    def _send_now(self, state: _State, job: _Job) -> None:
        """Send while the caller waits, at most ``send_timeout``; a later finish is not counted again."""
        with state.cond:
            # Sends abandoned at their deadline keep a thread and their message until the client
            # gives up. The queue's bounds limit them too: once they fill either, new messages are
            # dropped at once instead of each making the caller wait out another timeout.
            full = state.late >= self.max_queue_size or state.late_bytes >= self.max_queue_bytes
            if full:
                state.dropped += 1
        if full:
            self._log_dropped(job, "too many earlier sends still running past send_timeout")
            return
        attempt = _Attempt()
        try:
            threading.Thread(
                target=self._attempt,
                args=(state, job, attempt),
                name=f"msm-{self.kind.replace(' ', '-')}-send",
                daemon=True,
            ).start()
        except Exception as e:  # no thread can be started (resource limits, interpreter shutdown)
            with state.cond:
                state.failed += 1
            self._log_outcome(job, e)
            return
        attempt.done.wait(self.send_timeout)
        with state.cond:
            late = not attempt.finished
            if late:
                attempt.abandoned = True
                state.late += 1
                state.late_bytes += job.size
                state.failed += 1
            elif attempt.error is None:
                state.sent += 1
            else:
                state.failed += 1
        if late:
            logger.warning(
                "session_id=<%s>, destination=<%s>, send_timeout=<%s> | %s notification not sent within "
                "send_timeout; counted as failed, though it may still arrive",
                job.session_id,
                job.destination,
                self.send_timeout,
                self.kind,
            )
        else:
            self._log_outcome(job, attempt.error)

    def _attempt(self, state: _State, job: _Job, attempt: _Attempt) -> None:
        # Runs on its own daemon thread. Whichever comes first under the lock, the end of the send or
        # the caller giving up, decides how the message is counted; the other side counts nothing.
        error: BaseException | None
        try:
            job.send()
            error = None
        except BaseException as e:  # recorded as this send's failure; this thread has no one to raise to
            error = e
        with state.cond:
            attempt.error = error
            attempt.finished = True
            late = attempt.abandoned
        attempt.done.set()
        if late:
            logger.debug(
                "session_id=<%s>, destination=<%s>, outcome=<%s> | %s notification finished after its "
                "send_timeout; already counted as failed",
                job.session_id,
                job.destination,
                "sent" if error is None else describe_error(error),
                self.kind,
            )
            with state.cond:  # only now does it stop holding the bounds: it is entirely done
                state.late -= 1
                state.late_bytes -= job.size
                state.cond.notify_all()

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
                state.queued_bytes -= job.size
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
            self._log_outcome(job, e)
            return False
        self._log_outcome(job, None)
        return True

    # ------------------------------------------------------------------ logs

    def _log_outcome(self, job: _Job, error: BaseException | None) -> None:
        if error is None:
            logger.debug(
                "session_id=<%s>, destination=<%s> | %s notification sent", job.session_id, job.destination, self.kind
            )
            return
        logger.warning(
            "session_id=<%s>, destination=<%s>, error=<%s> | %s notification failed; it is lost",
            job.session_id,
            job.destination,
            describe_error(error),
            self.kind,
        )
        logger.debug("session_id=<%s> | %s failure detail", job.session_id, self.kind, exc_info=error)

    def _log_dropped(self, job: _Job, reason: str) -> None:
        logger.warning(
            "session_id=<%s>, destination=<%s>, size=<%d>, max_queue_size=<%d>, max_queue_bytes=<%d> | "
            "%s notification dropped: %s",
            job.session_id,
            job.destination,
            job.size,
            self.max_queue_size,
            self.max_queue_bytes,
            self.kind,
            reason,
        )

    # ------------------------------------------------------------------ control

    def stats(self) -> DeliveryStats:
        """The current counters."""
        state = self._current()
        with state.cond:
            return DeliveryStats(
                sent=state.sent,
                failed=state.failed,
                dropped=state.dropped,
                pending=state.pending,
                queued_bytes=state.queued_bytes,
            )

    @property
    def idle(self) -> bool:
        """Whether no send is running or waiting, including synchronous sends past their deadline."""
        state = self._current()
        with state.cond:
            return state.pending == 0 and state.late == 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted message is sent or has failed.

        A synchronous send abandoned at its ``send_timeout`` has already been counted as failed, so
        it is not waited for.

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
            state.queued_bytes = 0
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


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SessionValidationError(field, "must be a positive integer", value)


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
