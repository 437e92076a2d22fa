"""What the SNS and SQS hooks share: the worker, the client source and their lifecycle methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from ._delivery import (
    DEFAULT_EXIT_FLUSH_TIMEOUT,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SEND_TIMEOUT,
    ClientSource,
    DeliveryStats,
    DeliveryWorker,
    load_boto3,
)


class AWSNotificationHook:
    """Base of the AWS hooks: delivery off the request path, counters, ``flush`` and ``close``.

    A hook object is meant to be created once per process (at start-up, next to the factory) and
    shared by every session manager: it holds one background thread and, unless one is injected,
    the boto3 client it built. It is a context manager; leaving the ``with`` block calls
    :meth:`close`.
    """

    _service: str = ""
    _kind: str = ""

    def __init__(
        self,
        *,
        client: Any,
        synchronous: bool,
        max_queue_size: int,
        max_queue_bytes: int,
        send_timeout: float,
        exit_flush_timeout: float,
    ) -> None:
        if client is None:
            load_boto3()  # fail now, naming the extra to install, not later on the worker thread
        self._worker = DeliveryWorker(
            self._kind,
            synchronous=synchronous,
            max_queue_size=max_queue_size,
            max_queue_bytes=max_queue_bytes,
            send_timeout=send_timeout,
            exit_flush_timeout=exit_flush_timeout,
        )
        self._clients = ClientSource(self._service, client, send_timeout=self._worker.send_timeout)

    @property
    def synchronous(self) -> bool:
        """Whether messages are sent on the caller's thread before the hook returns."""
        return self._worker.synchronous

    @property
    def send_timeout(self) -> float:
        """Seconds a synchronous caller waits for one notification at most (see the hooks' arguments)."""
        return self._worker.send_timeout

    def stats(self) -> DeliveryStats:
        """Counters of sent, failed, dropped, pending and queued bytes (see :class:`DeliveryStats`)."""
        return self._worker.stats()

    def _sender(self, region: str | None, operation: str, params: dict[str, Any]) -> Callable[[], None]:
        """The closure that sends one message: ``client.<operation>(**params)`` with the region's client.

        In synchronous mode the client is resolved here, on the caller's thread and before the
        ``send_timeout`` clock starts: building one (the first time) is local work, not a wait for
        AWS. Otherwise it is resolved on the worker thread, so the caller never builds one.
        """
        clients = self._clients
        if self._worker.synchronous and not self._worker.closed:
            client = clients.get(region)
            return lambda: getattr(client, operation)(**params)
        return lambda: getattr(clients.get(region), operation)(**params)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every message handed to this hook so far is sent or has failed.

        Call it at the end of an AWS Lambda handler (or before any process freeze or exit): Lambda
        suspends the process as soon as the handler returns, background thread included.

        Args:
            timeout: Seconds to wait at most; ``None`` waits as long as it takes (each send is
                bounded by the client's own timeouts and retries: for a client we build, about
                ``send_timeout``).

        Returns:
            ``True`` if nothing is pending any more, ``False`` if the timeout ran out first.
        """
        return self._worker.flush(timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush for up to ``timeout`` seconds, stop the worker and close the boto3 clients we built.

        An injected client is left open. Messages handed to the hook after closing are dropped and
        counted; the write they belong to is unaffected.

        Returns:
            ``True`` if everything submitted before closing was delivered (or failed).
        """
        flushed = self._worker.close(timeout)
        if flushed and self._worker.idle:
            # A send still running (on the worker, or past a synchronous send_timeout) keeps using its
            # client; it is not closed under it.
            self._clients.close()
        return flushed

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._worker.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "DEFAULT_EXIT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_SEND_TIMEOUT",
    "AWSNotificationHook",
]
