"""The exception hierarchy.

Everything flowsignals raises on purpose derives from :class:`FlowSignalsError`. Errors about
arguments are also :class:`ValueError`, so code that already guards input keeps catching them.
Database errors other than those below are SQLAlchemy's own (``sqlalchemy.exc.DBAPIError`` and
subclasses, wrapping psycopg's), so handlers callers already have still catch them.
"""

from __future__ import annotations


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


class SchemaNotAtHeadError(FlowSignalsError):
    """The database schema is not at the revision this version of flowsignals needs."""
