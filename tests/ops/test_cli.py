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
    # The default role is viewer: refused, and the refusal is audited.
    assert main(["request-training", "--reason", "try", "--confirm", "20261201-aaaaaaaaaaaa"]) == 2
    assert "needs 'admin'" in capsys.readouterr().err
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "admin")
    assert main(["request-training", "--reason", "weekly"]) == 2  # no terminal to ask on
    assert "--confirm 20261201-aaaaaaaaaaaa is required" in capsys.readouterr().err
    assert main(["request-training", "--reason", "weekly", "--confirm", "20261201-aaaaaaaaaaaa"]) == 0
    assert "done: queued TRAINING_REQUEST" in capsys.readouterr().out
    assert main(["request-rollback", "--reason", "bad", "--expected-active", "tiny-base"]) == 2
    assert "no rollback snapshot" in capsys.readouterr().err
    assert main(["generate-dataset", "--reason", "outage fixed", "--confirm", "1999-01-01"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert main(["promote", "7", "--reason", "report read", "--confirm", "x"]) == 2
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
