import importlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opslib.db.models import utcnow
from opslib.execution.registry import AS_OF_CLOCK_SKEW, SEED_MAX, STAGES, StageError, validate_params


def test_build_dataset_parameters() -> None:
    params = validate_params("20_build_dataset", {"as_of": "2026-12-01", "source_window_days": 7, "seed": 3})
    assert params.as_of_instant == datetime(2026, 12, 1, tzinfo=UTC)
    assert validate_params("20_build_dataset", {"as_of": "2026-12-01T03:00:00+09:00"}).as_of_instant == datetime(
        2026, 11, 30, 18, tzinfo=UTC
    )
    assert validate_params("20_build_dataset", {}).as_of_instant is None
    assert validate_params("20_build_dataset", {}).generation_rule == "retrieval-group-v2"
    assert validate_params("20_build_dataset", {"generation_rule": "retrieval-group-v1"}).generation_rule.endswith("v1")
    for bad, message in [
        ({"generation_rule": "retrieval-group-v3"}, "generation_rule: Value error, must be one of retrieval-group-v1"),
        ({"as_of": "yesterday"}, "as_of: Value error, must be an ISO-8601"),
        ({"source_window_days": 0}, "source_window_days"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"epochs": 1}, "epochs: unknown parameter"),
    ]:
        with pytest.raises(StageError, match=message):
            validate_params("20_build_dataset", bad)


def test_unknown_names_are_listed_with_the_valid_ones() -> None:
    """A mistyped parameter or stage name: the error lists what is valid, once."""
    with pytest.raises(StageError) as unknown:
        validate_params("10_feedback_health", {"window_dayz": 3, "windowdays": 4})
    assert str(unknown.value) == (
        "stage 10_feedback_health: invalid parameters: window_dayz: unknown parameter; "
        "windowdays: unknown parameter; parameters of 10_feedback_health: window_days"
    )
    with pytest.raises(StageError, match=r"run_id: missing parameter$"):  # nothing unknown: no list
        validate_params("60_cutover", {})
    with pytest.raises(StageError) as stage:
        validate_params("10_feedback_healht", {})
    assert str(stage.value).endswith("known stages: " + ", ".join(sorted(STAGES)))


def test_parameters_are_held_to_their_real_ranges() -> None:
    """A seed is 0…2**32 − 1 wherever a stage takes one; ``as_of`` may be at most
    AS_OF_CLOCK_SKEW ahead of this machine's clock (a future window would stay "latest" for good)."""
    seeded = [name for name, spec in STAGES.items() if "seed" in spec.params.model_fields]
    assert seeded == ["20_build_dataset", "30_train_candidate"]
    for name in seeded:
        base = {"run_id": 1} if name == "30_train_candidate" else {}
        assert validate_params(name, {**base, "seed": SEED_MAX}).seed == 2**32 - 1  # type: ignore[attr-defined]
        for bad in (2**32, -1):
            with pytest.raises(StageError, match=f"{name}: invalid parameters: seed: Input should be"):
                validate_params(name, {**base, "seed": bad})
    now = utcnow()
    for ok in (now - timedelta(days=400), now, now + AS_OF_CLOCK_SKEW - timedelta(seconds=30)):
        validate_params("20_build_dataset", {"as_of": ok.isoformat()})
    ahead = (now + AS_OF_CLOCK_SKEW + timedelta(minutes=1)).replace(microsecond=0)
    with pytest.raises(StageError, match=f"as_of: Value error, {re.escape(ahead.isoformat())} is in the future"):
        validate_params("20_build_dataset", {"as_of": ahead.isoformat()})
    with pytest.raises(StageError, match="up to 5 minutes of clock skew"):
        validate_params("20_build_dataset", {"as_of": (now + timedelta(days=1)).date().isoformat()})
    for far in ("0001-01-01T00:00:00+14:00", "0001-01-05"):
        with pytest.raises(StageError, match=r"as_of: Value error, .*out of range"):
            validate_params("20_build_dataset", {"as_of": far})


def test_registry_names_match_notebooks() -> None:
    for name, spec in STAGES.items():
        assert spec.notebook == f"{name}.ipynb"


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_names_the_module_its_notebook_calls(name: str) -> None:
    """The registry's ``module`` is real and is what the notebook imports its stage logic from."""
    spec = STAGES[name]
    module = importlib.import_module(spec.module)
    assert module.__name__.startswith("opslib.lifecycle.")
    notebook = json.loads((ROOT / "notebooks" / spec.notebook).read_text())
    sources = "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert f"from {spec.module} import" in sources


def test_failures_of_run_stages_are_handled_and_others_are_not() -> None:
    for spec in STAGES.values():
        assert (spec.on_failure is None) == (spec.run_stage is None), spec.name


def test_the_architecture_table_lists_every_stage_with_its_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for spec in STAGES.values():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{spec.name}`")), None)
        assert row is not None, f"{spec.name} missing from the stage table"
        assert f"`{spec.module}`" in row and f"notebooks/{spec.notebook}" in row
