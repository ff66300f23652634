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


def test_nothing_points_outside_the_repository() -> None:
    """A clean clone has no sibling folders: no page, script or CI step may lean on one."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "Makefile", *sorted((ROOT / "docs").rglob("*"))]
    pages += [*sorted((ROOT / "bench").glob("*.py")), *sorted((ROOT / ".ci").iterdir())]
    leaning = [
        f"{page.relative_to(ROOT)}:{number}"
        for page in pages
        if page.is_file()
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if "../shared" in line or "/shared/" in line
    ]
    assert leaning == []


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_contracts_page_links_resolve_to_their_headings() -> None:
    page = CONTRACTS
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
        linked = (page.parent / target) if target else page
        headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)}
        if anchor not in headings:
            broken.append(f"{target or 'contracts.md'}#{anchor}")
    assert broken == []


CONTRACTS = ROOT / "docs" / "contracts.md"


def _contracts_rows(first_cells: str) -> list[str]:
    return [line for line in CONTRACTS.read_text().splitlines() if line.startswith(f"| {first_cells} |")]


def _section_rows(heading: str) -> list[str]:
    """The body rows of the table in section ``heading`` (not its header or separator)."""
    text = CONTRACTS.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return rows[2:]


def test_the_contracts_data_model_lists_every_table_and_field_the_code_has() -> None:
    from opslib.db.models import Base

    missing = []
    for name, table in Base.metadata.tables.items():
        rows = _contracts_rows(f"`{name}`")
        if len(rows) != 1:
            missing.append(f"table {name}: {len(rows)} rows")
            continue
        fields = rows[0].split(" | ")[1]
        missing += [f"{name}.{c.name}" for c in table.columns if f"`{c.name}`" not in fields]
    assert missing == []


def test_the_contracts_state_machines_are_the_code_s_tables() -> None:
    from opslib.control.release import TRANSITIONS as RELEASE
    from opslib.control.runs import TRANSITIONS as RUNS

    for source, target in RUNS:
        assert len(_contracts_rows(f"{source.value if source else '—'} | {target.value}")) == 1, (source, target)
    assert len(_section_rows("Run state machine")) == len(RUNS)  # and no move the code does not allow
    for kind, move in RELEASE.items():
        source = move.source.value if move.source else "—"
        assert len(_contracts_rows(f"`{kind}` | {source} | {move.target.value}")) == 1, kind
    assert len(_section_rows("Release state machine")) == len(RELEASE)


def test_the_contracts_stages_messages_and_feedback_fields_are_the_code_s() -> None:
    from opslib.control.messages import RollbackRequest, TrainingRequest
    from opslib.execution.registry import STAGES
    from opslib.lifecycle.feedback.events import FIELDS

    for name, spec in STAGES.items():
        rows = _contracts_rows(f"`{name}`")
        assert len(rows) == 1, name
        parameters = rows[0].split(" | ")[-1]
        assert [p for p in spec.params.model_fields if f"`{p}`" not in parameters] == [], name
    for message in (TrainingRequest, RollbackRequest):
        rows = _contracts_rows(f"`{message.model_fields['message_type'].default}`")
        assert len(rows) == 1 and [f for f in message.model_fields if f"`{f}`" not in rows[0]] == []
    text = CONTRACTS.read_text()
    feedback = text[text.index("## Feedback event") : text.index("## Training dataset")]
    assert [f for f in FIELDS if f"`{f}`" not in feedback] == []
