"""The Metadata DB: SQLAlchemy 2.0 models (``models``), engine and transactions (``engine``),
Alembic migrations (``migrate``, ``migrations/``). Imports nothing else from ``opslib`` but
``opslib.settings`` and ``opslib.errors``."""
