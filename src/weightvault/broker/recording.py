"""The services' one seam to the audit log: append, queue, and the write-ahead rule.

Every broker service records through an :class:`AuditRecorder`. It wraps the
audit sink so that the sink can be replaced in one place (tests inject failures
there) and so that every service applies the write-ahead rule the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import replace

from weightvault.auditlog.events import AuditEvent, SensitiveHasher
from weightvault.auditlog.log import AuditSink, Receipt, write_ahead

__all__ = ["AuditRecorder", "client_address"]

#: The network address of the client whose request is being served, set by the HTTP layer
#: for the request's task (thread-pool calls inherit it). Recorded only as a keyed hash.
client_address: ContextVar[str | None] = ContextVar("weightvault_client_address", default=None)


class AuditRecorder:
    """Appends events durably, queues them where the sink can, and runs changes under their intents."""

    def __init__(self, sink: AuditSink, *, hasher: SensitiveHasher | None = None) -> None:
        self.sink = sink
        self._hasher = hasher

    def _stamp(self, event: AuditEvent) -> AuditEvent:
        """Add ``hmac.client``, the keyed hash of the caller's address, when serving a request."""
        if self._hasher is None or "client" in event.hmac:
            return event
        address = client_address.get()
        if address is None:
            return event
        return replace(event, hmac={**event.hmac, "client": self._hasher.hash(address)})

    def append(self, event: AuditEvent) -> Receipt:
        """Append ``event`` and wait until it is durable."""
        return self.sink.append(self._stamp(event))

    def queue(self, event: AuditEvent) -> int:
        """Queue ``event`` without waiting when the sink can; returns its index.

        The event becomes durable with the next durable append of the same single
        writer, which commits in submission order.
        """
        event = self._stamp(event)
        submit = getattr(self.sink, "submit", None)
        if submit is not None:
            return int(submit(event).index)
        return self.sink.append(event).index

    def append_all(self, events: Sequence[AuditEvent]) -> Receipt:
        """Append ``events`` in order and wait until all are durable: every one but the last is queued,
        and the last one's durable commit carries them (the single writer commits in order)."""
        for event in events[:-1]:
            self.queue(event)
        return self.append(events[-1])

    @contextmanager
    def write_ahead(self, *intents: AuditEvent, wait_done: bool = True) -> Iterator[None]:
        """The write-ahead rule for one change: every intent is durable before the block runs;
        afterwards each gets its ``.done``, or ``.fail`` if the block raised. If an intent cannot be
        appended, the block never runs (AuditLogError): nothing changes without its record."""
        with ExitStack() as stack:
            for intent in intents:
                stack.enter_context(write_ahead(self.sink, self._stamp(intent), wait_done=wait_done))
            yield

    @property
    def failed(self) -> BaseException | None:
        """Why the log stopped accepting events, if it did (sinks that cannot fail say None)."""
        failure = getattr(self.sink, "failed", None)
        return failure if isinstance(failure, BaseException) else None
