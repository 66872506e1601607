"""The store's outbox table as the relay's ``OutboxSource`` (see ``pipeline.sinks``).

The outbox row id is the relay's handle; the published event id stays
``ticket_id:revision``, which is what consumers de-duplicate on.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.sinks import OutboxItem, TicketEvent
from pipeline.store import OutboxEvent, Store


def _event(row: OutboxEvent) -> TicketEvent:
    if row.event_type == "cluster.updated":
        # payload: {"ticket": the anchor's document, "cluster": the cluster}
        cluster = row.payload["cluster"]
        return TicketEvent(event_id=f"{cluster['cluster_id']}:{row.revision}",
                           ticket_id=row.ticket_id, revision=row.revision,
                           type="cluster.updated", ticket=row.payload["ticket"],
                           cluster=cluster, occurred_at=row.created_at)
    return TicketEvent(ticket_id=row.ticket_id, revision=row.revision, type=row.event_type,
                       ticket=row.payload, occurred_at=row.created_at)


class StoreOutbox:
    def __init__(self, store: Store, *, retry_base_s: float = 5.0) -> None:
        self.store = store
        self.retry_base_s = retry_base_s

    def pending(self, limit: int) -> Sequence[OutboxItem]:
        return [
            OutboxItem(
                event_id=str(row.id),
                event=_event(row),
                delivered=frozenset(row.delivered_to or ()),
            )
            for row in self.store.pending_outbox(limit)
        ]

    def mark_delivered(self, event_id: str, sink: str) -> None:
        self.store.mark_delivered(int(event_id), sink)

    def mark_sent(self, event_id: str) -> None:
        self.store.mark_sent(int(event_id))

    def mark_failed(self, event_id: str, sink: str, error: str, permanent: bool) -> None:
        message = f"{sink}: {error}"
        if permanent:
            self.store.park_event(int(event_id), message)
        else:
            self.store.mark_failed_attempt(int(event_id), message,
                                           base_delay=self.retry_base_s)
