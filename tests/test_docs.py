"""The docs hold together: relative links resolve, the example Airflow DAG is valid Python."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_in_the_docs_resolve() -> None:
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert broken == []


def test_the_example_airflow_dag_is_valid_python() -> None:
    path = ROOT / "docs" / "airflow" / "biblio_ops_dag.py"
    compile(path.read_text(), str(path), "exec")  # Airflow itself is not installed here
