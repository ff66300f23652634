from pathlib import Path

import pytest
from pydantic import ValidationError

from opslib.settings import Settings


def test_defaults_put_every_store_inside_the_workspace(tmp_path: Path) -> None:
    s = Settings(workspace=tmp_path / "ws")
    assert s.resolved_db_url == f"sqlite:///{tmp_path / 'ws' / 'metadata.db'}"
    assert s.resolved_object_store_url == str(tmp_path / "ws" / "objects")
    assert s.resolved_model_store_url == str(tmp_path / "ws" / "models")
    assert s.resolved_chroma_path == tmp_path / "ws" / "chroma"
    assert s.chroma_host is None
    assert s.operator_role == "viewer"


def test_environment_variables_with_ops_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "w2"))
    monkeypatch.setenv("OPS_DB_URL", "postgresql://db.example/ops")
    monkeypatch.setenv("OPS_CHROMA_HOST", "chroma.internal")
    monkeypatch.setenv("OPS_CHROMA_PORT", "8123")
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "admin")
    s = Settings()
    assert s.workspace == tmp_path / "w2"
    assert s.resolved_db_url == "postgresql://db.example/ops"
    assert (s.chroma_host, s.chroma_port, s.operator_role) == ("chroma.internal", 8123, "admin")


def test_config_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "ops.toml"
    config.write_text('operator = "kim"\noperator_role = "admin"\nobject_store_url = "memory://bucket"\n')
    monkeypatch.setenv("OPS_CONFIG_FILE", str(config))
    monkeypatch.setenv("OPS_OPERATOR", "lee")
    s = Settings()
    assert s.operator == "lee"  # environment beats the file
    assert s.operator_role == "admin"
    assert s.resolved_object_store_url == "memory://bucket"


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "ops.toml"
    config.write_text('operater = "typo"\n')
    with pytest.raises(ValidationError, match="operater"):
        Settings(config_file=config)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Settings(config_file=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("operator_role", "root"),
        ("chroma_port", 0),
        ("queue_visibility_timeout_s", -1),
        ("log_level", "LOUD"),
        # what a stage's schema would refuse is refused up front, not in the middle of a run
        ("training_learning_rates", [0.05]),
        ("training_losses", ["triplet"]),
        ("training_epochs", 51),
        ("evaluation_dataset_ref", "my-set"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert field in str(info.value)


def test_snapshot_ttl_must_cover_the_feedback_window() -> None:
    with pytest.raises(ValidationError, match="snapshot_ttl_days"):
        Settings(feedback_window_days=30, snapshot_ttl_days=7)


def test_as_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = Settings(
        workspace=tmp_path,
        operator="park",
        chroma_host="h",
        chroma_port=9000,
        operator_role="admin",
        training_learning_rates=[1e-5, 3e-5],  # lists travel as JSON
        training_losses=["gist", "mnrl"],
    )
    for key, value in original.as_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_notebooks_come_from_the_package_unless_ops_notebooks_dir_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from importlib.resources import files

    from opslib.execution.registry import STAGES

    packaged = Settings().resolved_notebooks_dir
    assert packaged == files("opslib.notebooks")
    assert all((packaged / spec.notebook).is_file() for spec in STAGES.values())
    monkeypatch.setenv("OPS_NOTEBOOKS_DIR", str(tmp_path))
    assert Settings().resolved_notebooks_dir == tmp_path


@pytest.mark.parametrize("value", ["ops/runs/", "/ops/runs", "http://127.0.0.1:8888/ops/runs/", "//evil/ops/runs/"])
def test_lab_runs_url_must_be_a_url_path_from_the_server_root(value: str) -> None:
    with pytest.raises(ValidationError, match="lab_runs_url") as error:
        Settings(lab_runs_url=value)
    assert "starts and ends with /" in str(error.value)
    assert Settings(lab_runs_url="/user/ana/ops/runs/").lab_runs_url == "/user/ana/ops/runs/"


def test_the_fine_tune_base_is_the_serving_model_unless_pinned_by_a_valid_version_name() -> None:
    assert Settings().training_base_model_version is None  # the run's baseline: whatever serves
    assert Settings(training_base_model_version="ko-sbert-1.0").training_base_model_version == "ko-sbert-1.0"
    with pytest.raises(ValidationError, match="training_base_model_version") as error:
        Settings(training_base_model_version="Bad..Name")
    assert "is not a model version name" in str(error.value)
