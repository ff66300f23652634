"""The built-in demo corpus: made at run time from the docstrings of Python's standard library.

Nothing is downloaded or copied into the repository. Each documented function, class or method
with a summary line and a body gives one query and its relevant passages: the query is the
docstring's first paragraph (what the object does), the passages are the rest of the docstring
cut into pieces of at most ``MAX_WORDS`` words — the summary itself is never part of a passage,
so a query does not simply find itself. Modules are videos, module families are projects.

The corpus is the same in every process on one Python version: the modules are the fixed list in
``PROJECTS`` (imported here, by name), their members are taken in sorted order, and only what the
standard library itself defines is documented — another library may attach members to stdlib
classes when it is imported (transformers adds ``logging.Logger.warning_once``), and those would
otherwise make the corpus depend on what the process imported before it (755 chunks in a fresh
process, 757 after sentence-transformers).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

from opslib.corpus.loader import CorpusSpec, Document, Query

MAX_WORDS = 120
MIN_BODY_WORDS = 12
PROJECTS: dict[str, tuple[str, ...]] = {
    "text": ("string", "textwrap", "re", "difflib", "unicodedata", "html", "json", "csv", "base64"),
    "data": (
        "collections",
        "itertools",
        "functools",
        "heapq",
        "bisect",
        "statistics",
        "math",
        "random",
        "decimal",
        "fractions",
        "datetime",
        "calendar",
        "operator",
    ),
    "system": (
        "os",
        "shutil",
        "pathlib",
        "subprocess",
        "tempfile",
        "glob",
        "fnmatch",
        "io",
        "logging",
        "argparse",
        "zipfile",
        "tarfile",
        "sqlite3",
        "threading",
        "queue",
        "configparser",
        "pickle",
        "copy",
        "contextlib",
        "inspect",
        "ast",
        "enum",
    ),
    "web": (
        "urllib.parse",
        "http.client",
        "http.cookies",
        "email.message",
        "email.utils",
        "xml.etree.ElementTree",
        "smtplib",
        "ftplib",
        "ipaddress",
        "mimetypes",
    ),
}


_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")


def _split_docstring(doc: str) -> tuple[str, str]:
    """(first sentence, the rest) of a docstring, after any leading call-signature paragraphs."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    while paragraphs and _SIGNATURE.match(paragraphs[0]):
        paragraphs.pop(0)
    if not paragraphs:
        return "", ""
    first = _SENTENCE_END.split(paragraphs[0], maxsplit=1)[0]
    remainder = paragraphs[0][len(first) :].strip()
    body = "\n\n".join(p for p in [remainder, *paragraphs[1:]] if p)
    return first, body


def _passages(body: str) -> list[str]:
    words = body.split()
    return [" ".join(words[i : i + MAX_WORDS]) for i in range(0, len(words), MAX_WORDS)]


def _from_stdlib(obj: object) -> bool:
    """Whether ``obj`` was defined by the standard library: its ``__module__`` is a stdlib module
    (``time``, ``_io``, ``email.iterators``), or it names none (a C builtin such as ``random.random``)."""
    module = getattr(obj, "__module__", None)
    return not isinstance(module, str) or module.partition(".")[0] in sys.stdlib_module_names


def _members(module: object) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    name = getattr(module, "__name__", "")
    for attr, value in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(value, "__module__", None) not in (name, f"_{name}", None):
            continue
        if inspect.isclass(value):
            found.append((attr, value))
            for method, member in sorted(vars(value).items()):
                if not method.startswith("_") and callable(member) and _from_stdlib(member):
                    found.append((f"{attr}.{method}", member))
        elif inspect.isfunction(value) or inspect.isbuiltin(value):
            found.append((attr, value))
    return found


def build_demo_corpus(name: str = "stdlib", max_per_module: int | None = None) -> CorpusSpec:
    documents: list[Document] = []
    queries: list[Query] = []
    seen_summaries: set[str] = set()
    for project, modules in PROJECTS.items():
        for module_name in modules:
            module = importlib.import_module(module_name)
            taken = 0
            for qualname, obj in _members(module):
                doc = inspect.getdoc(obj)
                if not doc:
                    continue
                summary, body = _split_docstring(doc)
                # A summary repeated verbatim in its body would make the query find itself.
                if (
                    len(summary) < 10
                    or len(body.split()) < MIN_BODY_WORDS
                    or summary in seen_summaries
                    or summary.lower() in body.lower()
                ):
                    continue
                seen_summaries.add(summary)
                query_id = f"{module_name}.{qualname}"
                doc_ids = []
                for position, passage in enumerate(_passages(body)):
                    doc_id = f"{query_id}-p{position}"
                    documents.append(
                        Document(doc_id=doc_id, text=passage, project_key=project, video_key=module_name, title="")
                    )
                    doc_ids.append(doc_id)
                queries.append(Query(query_id=query_id, text=summary, relevant_doc_ids=tuple(doc_ids)))
                taken += 1
                if max_per_module is not None and taken >= max_per_module:
                    break
    return CorpusSpec(name=name, source="python-stdlib-docstrings", documents=documents, queries=queries)
