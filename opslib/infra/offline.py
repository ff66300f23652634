"""Nothing may download at run time: the Hugging Face libraries' offline switches.

``import opslib`` changes no environment variable; the code that loads a model calls
``use_offline_environment()`` immediately before importing sentence-transformers / transformers
(they read the flags when first imported), and the runner passes the same flags to a stage's
kernel. A value already set in the environment is left as it is.
"""

from __future__ import annotations

import os

OFFLINE_ENVIRONMENT: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def use_offline_environment() -> None:
    """Set the offline flags in this process's environment, unless already set."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
