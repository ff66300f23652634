"""opslib — the Biblio Ops Workbench package: every lifecycle stage's logic lives here."""

import os

# Nothing may download at run time: keep Hugging Face libraries offline in every process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
