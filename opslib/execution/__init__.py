"""How stages run: the stage registry (``registry``), the Papermill runner and its archive
(``runner``), what a notebook's first cell opens (``context``), the ML Lifecycle Worker
(``worker``), cron schedules (``schedule``), the run index (``run_index``), report display
helpers and plots (``display``) and the ``opsbench`` Papermill engine (``papermill_engine``).

Imports from ``opslib.lifecycle`` and below.
"""
