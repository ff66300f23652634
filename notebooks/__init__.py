"""The stage notebooks, shipped inside the installed package as ``opslib.notebooks``.

This folder is where operators open them (JupyterLab); ``pyproject.toml`` maps it to the
``opslib.notebooks`` package so ``pip install .`` and ``pip install -e .`` both carry them, and
``opslib.settings`` finds them with ``importlib.resources`` (``OPS_NOTEBOOKS_DIR`` overrides).
"""
