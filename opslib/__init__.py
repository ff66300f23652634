"""opslib — the Biblio Ops Workbench package: every lifecycle stage's logic lives here.

Importing it changes nothing in the process (no environment variables): the offline switches for
the Hugging Face libraries are set where a model is loaded (``opslib.infra.offline``).
"""

from importlib.metadata import version

__version__ = version("opslib")  # the one version number is pyproject.toml's
