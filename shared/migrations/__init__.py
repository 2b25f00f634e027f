"""Alembic migrations for the MyoTriage database."""
