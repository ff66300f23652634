"""The built-in corpus is the same in every process, whatever the process imported first."""

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.loader import CorpusSpec

ROOT = Path(__file__).resolve().parents[2]

# Prints the corpus's digest and sizes after importing the modules named on the command line.
_SCRIPT = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from opslib.corpus.builtin import build_demo_corpus
from tests_digest import digest
spec = build_demo_corpus()
print(digest(spec), len(spec.documents), len(spec.queries))
"""


def digest(spec: CorpusSpec) -> str:
    """Everything a corpus import reads: ids, texts, grouping, queries and their judgments."""
    documents = [[d.doc_id, d.text, d.project_key, d.video_key, d.title] for d in spec.documents]
    queries = [[q.query_id, q.text, list(q.relevant_doc_ids)] for q in spec.queries]
    return hashlib.sha256(json.dumps([documents, queries]).encode()).hexdigest()


def _in_fresh_process(tmp_path: Path, *imports: str) -> tuple[str, int, int]:
    helper = tmp_path / "tests_digest.py"
    helper.write_text(Path(__file__).read_text())  # gives the subprocess the same digest()
    path = os.pathsep.join([str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *imports],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    value, documents, queries = done.stdout.split()
    return value, int(documents), int(queries)


@pytest.mark.slow
def test_two_processes_build_the_same_corpus_whatever_they_imported_first(tmp_path: Path) -> None:
    fresh = _in_fresh_process(tmp_path)
    # transformers attaches warning_once/info_once to logging.Logger when imported: the corpus
    # used to gain two queries (755 → 757 chunks) in any process that had loaded it first.
    busy = _in_fresh_process(tmp_path, "transformers.utils.logging", "asyncio", "xml.dom.minidom", "email.mime.text")
    assert busy == fresh
    assert fresh[1] > 500 and fresh[2] > 300


def test_members_another_library_attaches_to_a_stdlib_class_are_not_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = build_demo_corpus()

    def shout_once(self: logging.Logger, msg: str) -> None:
        """Log a message once per process at warning level.

        Attached from outside the standard library, as some libraries do when imported; it is no
        part of the standard library's documentation and must not become a query.
        """

    shout_once.__module__ = "somelib.logging"
    monkeypatch.setattr(logging.Logger, "shout_once", shout_once, raising=False)
    after = build_demo_corpus()
    assert "logging.Logger.shout_once" not in {q.query_id for q in after.queries}
    assert digest(after) == digest(before)
