"""One module or small subpackage per lifecycle stage: ``feedback`` (events, health, traffic
simulator), ``dataset`` (builder, data quality), ``training``, ``evaluation`` (metrics and verdict,
evaluation sets, report pieces), ``reindex``, ``cutover``, ``rollback`` and ``index_snapshot``.

Imports from ``opslib.corpus`` and below; the stage notebooks call into these modules.
"""
