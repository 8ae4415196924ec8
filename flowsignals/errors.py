"""The exception hierarchy.

Everything flowsignals raises on purpose derives from :class:`FlowSignalsError`. Errors about
arguments are also :class:`ValueError`, so code that already guards input keeps catching them.
Database errors other than those below are SQLAlchemy's own (``sqlalchemy.exc.DBAPIError`` and
subclasses, wrapping psycopg's), so handlers callers already have still catch them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowsignals.results import SignalWaiter


class FlowSignalsError(Exception):
    """Base class of every error raised by flowsignals."""


class InvalidArgumentError(FlowSignalsError, ValueError):
    """An argument broke a documented rule; nothing was written.

    Attributes:
        argument: The name of the offending argument, as in the method's signature.
    """

    def __init__(self, argument: str, rule: str) -> None:
        self.argument = argument
        self.rule = rule
        super().__init__(f"{argument}: {rule}")


class WaitTimeoutError(FlowSignalsError, TimeoutError):
    """A wait ended because its timeout passed while the waiter was still pending.

    Attributes:
        run_id: The run waited on.
        step_key: The step waited on.
        timeout: The timeout, in seconds.
    """

    def __init__(self, run_id: object, step_key: str, timeout: float) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.timeout = timeout
        super().__init__(f"waiter ({run_id}, {step_key!r}) received no signal within {timeout:g} s")


class WaiterNotFoundError(FlowSignalsError):
    """There is no waiter to wait on: never registered, or removed (also while waiting).

    Attributes:
        run_id: The run waited on.
        step_key: The step waited on.
    """

    def __init__(self, run_id: object, step_key: str) -> None:
        self.run_id = run_id
        self.step_key = step_key
        super().__init__(f"no waiter ({run_id}, {step_key!r})")


class WaiterExpiredError(FlowSignalsError):
    """The waiter's deadline passed undelivered (or it was claimed): no signal will come.

    Attributes:
        waiter: The waiter as last read (a :class:`~flowsignals.SignalWaiter`).
    """

    def __init__(self, waiter: SignalWaiter) -> None:
        self.waiter = waiter
        state = "claimed as expired" if waiter.claimed_at is not None else "expired"
        super().__init__(
            f"waiter ({waiter.run_id}, {waiter.step_key!r}) {state} at its deadline"
            f" {waiter.expires_at.isoformat() if waiter.expires_at else None}"
        )


class HostLineageError(FlowSignalsError):
    """flowsignals' own migrations were asked to run where a host's Alembic runs them."""


class StoreClosedError(FlowSignalsError):
    """The store was closed; create a new one to go on."""


class SchemaNotAtHeadError(FlowSignalsError):
    """The database schema is not at the revision this version of flowsignals needs."""
