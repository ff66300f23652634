from datetime import UTC, datetime

import pytest

from opslib.execution.registry import STAGES, StageError, validate_params


def test_build_dataset_parameters() -> None:
    params = validate_params("20_build_dataset", {"as_of": "2026-12-01", "source_window_days": 7, "seed": 3})
    assert params.as_of_instant == datetime(2026, 12, 1, tzinfo=UTC)
    assert validate_params("20_build_dataset", {"as_of": "2026-12-01T03:00:00+09:00"}).as_of_instant == datetime(
        2026, 11, 30, 18, tzinfo=UTC
    )
    assert validate_params("20_build_dataset", {}).as_of_instant is None
    for bad, message in [
        ({"as_of": "yesterday"}, "as_of: Value error, must be an ISO-8601"),
        ({"source_window_days": 0}, "source_window_days"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"epochs": 1}, "epochs: unknown parameter"),
    ]:
        with pytest.raises(StageError, match=message):
            validate_params("20_build_dataset", bad)


def test_registry_names_match_notebooks() -> None:
    for name, spec in STAGES.items():
        assert spec.notebook == f"{name}.ipynb"
