"""What is searched: corpora (``loader``, ``beir``, ``builtin``), video ingest (``ingest``), the
index SOT kept in step with the vector store (``indexing``) and the serving path (``search``).

Imports from ``opslib.control`` and below.
"""
