"""flowsignals: a durable "wait for a signal" store for workflow engines, on PostgreSQL."""

from flowsignals.errors import (
    FlowSignalsError,
    HostLineageError,
    InvalidArgumentError,
    SchemaNotAtHeadError,
    StoreClosedError,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaitTimeoutError,
)
from flowsignals.memory import InMemorySignalStore
from flowsignals.protocol import SignalStore
from flowsignals.results import (
    DeliveryResult,
    DeliveryStatus,
    SignalWaiter,
    WaiterCounts,
    WaiterCursor,
    WaiterState,
)
from flowsignals.store import PostgresSignalStore

__all__ = [
    "DeliveryResult",
    "DeliveryStatus",
    "FlowSignalsError",
    "HostLineageError",
    "InMemorySignalStore",
    "InvalidArgumentError",
    "PostgresSignalStore",
    "SchemaNotAtHeadError",
    "SignalStore",
    "SignalWaiter",
    "StoreClosedError",
    "WaitTimeoutError",
    "WaiterCounts",
    "WaiterCursor",
    "WaiterExpiredError",
    "WaiterNotFoundError",
    "WaiterState",
]
