"""What operators touch: the ``opsbench`` CLI (``cli``), guarded and audited actions
(``actions``), the dashboard's read models (``monitor``) and widgets (``dashboard``), workspace
bootstrap (``bootstrap``) and the demo (``demo``).

The top layer: may import anything in ``opslib``; nothing imports it.
"""
