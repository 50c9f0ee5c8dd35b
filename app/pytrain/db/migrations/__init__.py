"""Alembic migrations of PyTrain's schema (``env.py``, ``versions/``); run with ``pytrain db upgrade``."""
