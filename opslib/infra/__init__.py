"""Plumbing over the stores: JSON logs, object storage, the vector store, model artifacts, the
embedding endpoint, heartbeats, fault points, and the ``Workspace`` that composes them.

Imports from ``opslib.db``, ``opslib.settings`` and ``opslib.errors`` only. Nothing here changes a
lifecycle state: the embedding endpoint reads the release row to check a purpose, no more.
"""
