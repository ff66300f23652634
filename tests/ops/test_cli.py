import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import feedback_event, feedback_line, write_beir

from opslib.ops.cli import build_parser, main, parse_param

COMMANDS = [
    "init",
    "db",
    "import-beir",
    "import-builtin",
    "simulate-traffic",
    "ingest-feedback",
    "run",
    "worker",
    "schedule",
    "request-training",
    "request-rollback",
    "generate-dataset",
    "promote",
    "register-eval",
    "report",
    "status",
    "demo",
]


def _env(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OPS_BASE_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("OPS_BASE_MODEL_VERSION", "tiny-base")
    monkeypatch.setenv("OPS_LOG_LEVEL", "WARNING")


@pytest.mark.parametrize("command", [[c] for c in COMMANDS] + [["db", "upgrade"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: opsbench {' '.join(command)}")


def test_the_entry_point_lists_every_command() -> None:
    done = subprocess.run([sys.executable, "-m", "opslib.ops.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: opsbench" in done.stdout
    for name in COMMANDS:
        assert name in done.stdout


def test_parse_param() -> None:
    assert parse_param("window_days=7") == ("window_days", 7)
    assert parse_param("lr=2e-5") == ("lr", 2e-5)
    assert parse_param("as_of=2026-12-01") == ("as_of", "2026-12-01")
    assert parse_param('name="x=y"') == ("name", "x=y")


def test_cli_flow_and_clear_errors(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(tmp_path, tiny_model_dir, monkeypatch)
    assert main(["status"]) == 0
    assert "opsbench init" in capsys.readouterr().out
    assert main(["run", "10_feedback_health"]) == 2
    assert "opsbench db upgrade" in capsys.readouterr().err
    assert main(["init", "--quiet"]) == 0
    assert "bootstrapped" in capsys.readouterr().out
    assert main(["import-beir", str(write_beir(tmp_path / "mini")), "--quiet"]) == 0
    assert "24 chunks" in capsys.readouterr().out
    assert main(["import-beir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["simulate-traffic", "--corpus", "mini", "--requests", "10", "--quiet"]) == 0
    assert "10 requests" in capsys.readouterr().out
    feedback = tmp_path / "fb.jsonl"
    feedback.write_bytes(feedback_line(feedback_event()) + b"\nnot json\n")
    assert main(["ingest-feedback", str(feedback)]) == 0
    out = capsys.readouterr().out
    assert "2 lines: 1 accepted" in out and "rejected 1: not JSON" in out
    assert main(["run", "10_feedback_health", "-p", "window_dayz=3"]) == 2
    assert "window_dayz: unknown parameter" in capsys.readouterr().err
    assert main(["run", "10_feedback_health", "-p", "oops"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["release"]["active_model_version"] == "tiny-base"
    assert status["corpus"]["chunks"] == 24 and status["corpus"]["imports"] == ["mini"]
    assert [(t["schedule"], t["last_status"]) for t in status["schedules"]] == [("dataset", None), ("training", None)]
    assert all(t["next_due_at"] for t in status["schedules"])


def test_bad_settings_are_reported(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "god")
    assert main(["status"]) == 2
    assert "operator_role" in capsys.readouterr().err


def test_parser_requires_a_command() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_guarded_actions_from_the_cli(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import dataset_row

    from opslib.db.models import AuditLog, OpsMessage
    from opslib.infra.workspace import Workspace
    from opslib.settings import Settings

    _env(tmp_path, tiny_model_dir, monkeypatch)
    assert main(["init", "--quiet"]) == 0
    ws = Workspace(Settings())
    dataset_row(ws)
    capsys.readouterr()
    # The default role is viewer: refused (exit 3, shown as a refusal), and the refusal is audited.
    assert main(["request-training", "--reason", "try", "--confirm", "20261201-aaaaaaaaaaaa"]) == 3
    err = capsys.readouterr().err
    assert "\nrefused: operator" in err and "needs 'admin'" in err and "(audited)" in err and "error:" not in err
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "admin")
    assert main(["request-training", "--reason", "weekly"]) == 2  # no terminal to ask on
    assert "--confirm 20261201-aaaaaaaaaaaa is required" in capsys.readouterr().err
    assert main(["request-training", "--reason", "weekly", "--confirm", "20261201-aaaaaaaaaaaa"]) == 0
    assert "done: queued TRAINING_REQUEST" in capsys.readouterr().out
    assert main(["request-rollback", "--reason", "bad", "--expected-active", "tiny-base"]) == 3
    assert "no rollback snapshot" in capsys.readouterr().err
    assert main(["generate-dataset", "--reason", "outage fixed", "--confirm", "1999-01-01"]) == 3
    assert "does not match" in capsys.readouterr().err
    assert main(["promote", "7", "--reason", "report read", "--confirm", "x"]) == 3
    assert "run 7: no such run" in capsys.readouterr().err
    with ws.db.read() as session:
        assert [a.result.split(":")[0] for a in session.query(AuditLog).order_by(AuditLog.id)] == [
            "refused",
            "queued TRAINING_REQUEST message 1",
            "refused",
            "refused",
            "refused",
        ]
        assert session.query(OpsMessage).count() == 1


def test_each_marker_has_its_own_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Commands that hit each marker for real; Conflict (no cheap command loses a race) through
    a command whose work raises one."""
    from opslib.control.release import ReleaseConflict
    from opslib.ops import cli

    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OPS_LOG_LEVEL", "WARNING")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["run", "99_no_such_stage"]) == 2  # Invalid (StageError)
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: stage '99_no_such_stage': unknown")
    assert main(["request-training", "--reason", "try", "--confirm", "x"]) == 3  # Refused: the role guard
    assert capsys.readouterr().err.splitlines()[-1].startswith("refused: operator")
    assert main(["run", "10_feedback_health", "--run-id", "999"]) == 4  # NotFound, before anything runs
    assert capsys.readouterr().err.splitlines()[-1] == "error: run 999: no such run"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ipynb"))

    def lose_the_race(ws: object) -> None:
        raise ReleaseConflict("release transition CUTOVER: the release changed (row version 3, expected 2)")

    monkeypatch.setattr(cli, "build_run_index", lose_the_race)
    assert main(["report"]) == 5  # Conflict (the narrower marker of a refused release transition)
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: release transition CUTOVER: the release")

    def bug(ws: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "build_run_index", bug)
    with pytest.raises(ZeroDivisionError):  # not ours: a traceback, as before
        main(["report"])


def test_exit_codes_by_marker() -> None:
    from opslib.control.release import ReleaseConflict, ReleaseError
    from opslib.control.runs import RunNotFound
    from opslib.errors import Conflict, Invalid, NotFound, OpsError, Refused
    from opslib.infra.storage import ObjectExistsError, ObjectNotFoundError, StorageError
    from opslib.ops.cli import EXIT_CODES_HELP, CliError, exit_code

    assert [exit_code(cls("x")) for cls in (OpsError, Invalid, Refused, NotFound, Conflict)] == [1, 2, 3, 4, 5]
    assert [exit_code(cls("x")) for cls in (StorageError, CliError, ReleaseError)] == [1, 2, 3]
    assert [exit_code(cls("x")) for cls in (ObjectNotFoundError, RunNotFound)] == [4, 4]
    assert [exit_code(cls("x")) for cls in (ObjectExistsError, ReleaseConflict)] == [5, 5]
    for code in range(6):
        assert f"\n  {code}  " in "\n" + EXIT_CODES_HELP


def test_the_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and "3  refused" in out and "5  conflict" in out
