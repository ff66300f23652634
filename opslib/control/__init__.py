"""Every state machine of the lifecycle, each an explicit transition table with one guarded,
transactional function: training runs (``runs``), the serving release (``release``), a video's
serving state (``serving``), control messages (``messages``) and the queue they travel on
(``queue``).

Imports from ``opslib.infra`` and below.
"""
