"""How stages run: the stage registry (``registry``), the Papermill runner and its archive
(``runner``), what a notebook's first cell opens (``context``), the ML Lifecycle Worker
(``worker``), cron schedules (``schedule``), the run index (``run_index``) and report display
helpers and plots (``display``).

Imports from ``opslib.lifecycle`` and below.
"""
