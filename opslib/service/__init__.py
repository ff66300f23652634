"""The managed embedding endpoint over HTTP (``opsbench serve``): search, feedback intake,
OpenAI-compatible embeddings, liveness/readiness and Prometheus metrics — one process per replica,
following the Metadata DB's release row. See docs/serving.md."""
