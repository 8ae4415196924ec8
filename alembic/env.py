"""Alembic environment for the repository's ``alembic.ini``.

A shim: the packaged env (``flowsignals/migrations/env.py``) and this one run the same code, so
the CLI and :func:`flowsignals.migrations.upgrade` cannot drift apart.
"""

from flowsignals.migrations.environment import run

run()
