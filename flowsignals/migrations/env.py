"""Alembic environment of flowsignals' migrations; the logic is in ``environment.py``."""

from flowsignals.migrations.environment import run

run()
