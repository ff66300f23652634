import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import feedback_event, feedback_line, write_beir, write_stage_notebook

from opslib.ops.cli import build_parser, main, parse_param

COMMANDS = [
    "init",
    "db",
    "import-beir",
    "import-builtin",
    "export-builtin",
    "simulate-traffic",
    "ingest-feedback",
    "run",
    "worker",
    "schedule",
    "request-training",
    "request-rollback",
    "generate-dataset",
    "promote",
    "reindex-active",
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
    assert main(["status"]) == 2
    assert "opsbench init" in capsys.readouterr().err
    assert main(["run", "10_feedback_health"]) == 2
    assert "opsbench init" in capsys.readouterr().err
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
    assert "window_dayz: unknown parameter; parameters of 10_feedback_health: window_days" in capsys.readouterr().err
    assert main(["run", "10_feedback_health", "-p", "oops"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["release"]["active_model_version"] == "tiny-base"
    assert status["corpus"]["chunks"] == 24 and status["corpus"]["imports"] == ["mini"]
    assert [(t["schedule"], t["last_status"]) for t in status["schedules"]] == [("dataset", None), ("training", None)]
    assert all(t["next_due_at"] for t in status["schedules"])


def test_read_only_commands_create_nothing_and_every_command_gives_one_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On an empty folder a read-only command refuses with the hint and creates no file (SQLite
    would create metadata.db on connect); status and run say the same words, for an uninitialised
    workspace and for an outdated schema."""
    from opslib.db.migrate import head_revision

    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv("OPS_WORKSPACE", str(folder / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(folder / "runs"))
    monkeypatch.setenv("OPS_LOG_LEVEL", "WARNING")
    for command in (["status"], ["status", "--json"], ["report"], ["metrics"], ["db", "current"], ["run", "x"]):
        assert main(command) == 2, command
        out, err = capsys.readouterr()
        assert out == "" and err.endswith(": no such file; the workspace is not initialised: run `opsbench init`\n")
    assert list(folder.iterdir()) == []
    assert main(["db", "upgrade", "0010"]) == 0
    capsys.readouterr()
    outdated = f"the Metadata DB's schema is at revision '0010', the code needs {head_revision()!r}: "
    for command in (["status"], ["run", "10_feedback_health"]):
        assert main(command) == 2, command
        assert capsys.readouterr().err.endswith(f"{outdated}run `opsbench db upgrade`\n"), command


def test_a_short_folder_name_imports_under_a_derived_name_and_corpus_errors_list_the_imported(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """import-beir of a folder named "ko" (too short for the name rule) imports as beir-ko and says
    so; simulate-traffic without --corpus, or with an unknown one, lists the imported corpora;
    register-eval --corpus merges a query text that appears twice (reported) instead of refusing."""
    _env(tmp_path, tiny_model_dir, monkeypatch)
    assert main(["init", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["simulate-traffic", "--requests", "1"]) == 2
    assert "--corpus is required: no corpus is imported yet (`opsbench import-builtin`" in capsys.readouterr().err
    folder = write_beir(tmp_path / "ko")
    queries = (folder / "queries.jsonl").read_text().splitlines()
    # q02 asks what q00 asks (both in project alpha): a duplicate query text with other answers.
    queries[2] = json.dumps({"_id": "q02", "text": json.loads(queries[0])["text"].upper()})
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    assert main(["import-beir", str(folder), "--reserve-fraction", "0.99", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "corpus name: beir-ko (from the folder 'ko'" in out and "imported beir-ko: 24 chunks" in out
    assert "12 reserved queries" in out
    assert main(["simulate-traffic", "--requests", "1"]) == 2
    assert capsys.readouterr().err == "error: --corpus is required: imported corpora: beir-ko\n"
    assert main(["simulate-traffic", "--corpus", "ko", "--requests", "1"]) == 2
    assert capsys.readouterr().err == "error: corpus 'ko': not imported; imported corpora: beir-ko\n"
    assert main(["register-eval", "--corpus", "beir-ko"]) == 0
    out = capsys.readouterr().out
    assert ": 11 queries (corpus beir-ko: reserved queries)" in out
    assert "1 duplicate query text(s) merged into one query each (expected results united)" in out


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
    # The role is checked before anything is shown or asked (no --reason, no --confirm needed to
    # learn it), and the refusal says how to act as admin.
    assert main(["generate-dataset"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and "this action needs 'admin' (to act as admin: set OPS_OPERATOR_ROLE=admin" in err
    # The default role is viewer: refused (exit 3, shown as a refusal), and the refusal is audited.
    assert main(["request-training", "--reason", "try", "--confirm", "20261201-aaaaaaaaaaaa"]) == 3
    err = capsys.readouterr().err
    assert "\nrefused: operator" in err and "needs 'admin'" in err and "(audited)" in err and "error:" not in err
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "admin")
    assert main(["request-training"]) == 2  # an admin is asked for the reason next
    assert "--reason is required" in capsys.readouterr().err
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


def test_run_refuses_parameters_out_of_range_or_naming_nothing_before_anything_runs(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 (invalid parameters), one line naming the parameter and why, no traceback, and no
    execution: not a notebook that fails inside, nor an IntegrityError."""
    _env(tmp_path, tiny_model_dir, monkeypatch)
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    for args, message in [
        (["30_train_candidate", "-p", "run_id=99999"], "run_id 99999: no such run"),
        (["70_rollback", "-p", "message_id=99999"], "message_id 99999: no such message"),
        (["20_build_dataset", "-p", "seed=4294967296"], "seed: Input should be less than or equal to 4294967295"),
        (
            ["20_build_dataset", "-p", "as_of=2099-01-01"],
            "as_of: Value error, 2099-01-01T00:00:00+00:00 is in the future",
        ),
    ]:
        assert main(["run", *args, "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"error: stage {args[0]}: invalid parameters: ") and message in err, err
        assert err.count("\n") == 1  # one line
    assert _executions(tmp_path) == []
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ipynb"))
    done = subprocess.run(
        [sys.executable, "-m", "opslib.ops.cli", "run", "30_train_candidate", "-p", "run_id=99999"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "IntegrityError" not in done.stderr
    assert done.stderr.strip().endswith("run_id 99999: no such run")


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


def _executions(tmp_path: Path) -> list[tuple[str, str]]:
    from opslib.db.models import StageExecution
    from opslib.infra.workspace import Workspace
    from opslib.settings import Settings

    with Workspace(Settings(workspace=tmp_path / "ws")).db.read() as session:
        return [(e.stage, e.status.value) for e in session.query(StageExecution).order_by(StageExecution.id)]


@pytest.mark.slow
def test_run_exits_1_when_the_stage_notebook_fails_and_3_when_it_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage whose parameters pass validation but whose notebook raises: exit 1 (failed), or 3
    when what it raises is a ``Refused``; the execution archived and recorded FAILED either way;
    the same stage succeeding exits 0."""
    from opslib.execution.registry import STAGES, StageParams, StageSpec

    class ScratchParams(StageParams):
        x: int = 1

    notebooks = tmp_path / "notebooks"
    write_stage_notebook(
        notebooks / "99_scratch.ipynb",
        "x = 1\nops_execution_id = None",
        "from opslib.execution.context import record_error_classes\nrecord_error_classes()",
        "from opslib.errors import Refused\n"
        "if x == 3:\n    raise Refused(f'not now with x={x}')\n"
        "if x == 4:\n    raise ValueError(f'boom with x={x}')",
    )
    monkeypatch.setitem(STAGES, "99_scratch", StageSpec("99_scratch", "99_scratch.ipynb", ScratchParams, "", __name__))
    monkeypatch.setenv("OPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("OPS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("OPS_NOTEBOOKS_DIR", str(notebooks))
    monkeypatch.setenv("OPS_LOG_LEVEL", "WARNING")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["run", "99_scratch", "-p", "x=4", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "99_scratch FAILED (execution 1)" in out
    assert "failed at cell 3: ValueError: boom with x=4" in out  # 0 parameters, 1 injected by Papermill
    assert main(["run", "99_scratch", "-p", "x=3", "--quiet"]) == 3  # a guard in the notebook said no
    assert "refused at cell 3: Refused: not now with x=3" in capsys.readouterr().out
    assert main(["run", "99_scratch", "-p", "x=1", "--quiet"]) == 0
    assert "99_scratch SUCCEEDED (execution 3)" in capsys.readouterr().out
    assert _executions(tmp_path) == [("99_scratch", "FAILED"), ("99_scratch", "FAILED"), ("99_scratch", "SUCCEEDED")]
    assert len(list((tmp_path / "runs").rglob("*-99_scratch.html"))) == 3  # all archived


# The demo's stages as cheap stand-ins: each prints, or raises when it is the failing one; 20 can
# record an eligible dataset (as a real 20 would) so that the demo goes on to train.
_DEMO_PARAMETERS = {
    "10_feedback_health": "window_days = 7\nops_execution_id = None",
    "20_build_dataset": "as_of = None\nsource_window_days = 30\nseed = 0\nops_execution_id = None",
    "30_train_candidate": "run_id = 0\nepochs = 3\nbatch_size = 16\nlearning_rates = [2e-5]\n"
    "losses = ['mnrl']\nmax_seq_length = 128\nseed = 0\nops_execution_id = None",
}
_ELIGIBLE_DATASET = """
import json
from datetime import timedelta
from opslib.db.models import TrainingDataset, utcnow
from opslib.infra.workspace import open_workspace
end = utcnow()
ws = open_workspace()
# The worker verifies a dataset before a run starts on it: its artifact and checksums must be there.
stored = ws.objects.put_bytes("datasets/20261201-aaaaaaaaaaaa/train.jsonl", b"")
ws.objects.put_text("datasets/20261201-aaaaaaaaaaaa/manifest.json", json.dumps({"lineage": {"train_sha256": stored.sha256}}))
with ws.db.transaction() as session:
    session.add(TrainingDataset(dataset_version="20261201-aaaaaaaaaaaa", storage_path="x",
        generation_rule_version="retrieval-group-v1", source_window_start=end - timedelta(days=30),
        source_window_end=end, counts={"trainable_groups": 12, "negatives": 30}, eligible=True,
        ineligible_reasons=[]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("failing", [None, "10_feedback_health", "20_build_dataset", "30_train_candidate"])
def test_demo_exits_1_when_a_step_fails(
    failing: str | None,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real demo code path (``opsbench demo``) with cheap stand-ins for its slow parts: the
    mini corpus for the built-in one, stage notebooks that print or raise. A failed 10 or 20, or
    a training run that fails after an eligible dataset, exits 1; all steps passing exits 0."""
    import dataclasses

    from helpers import mini_corpus_spec

    from opslib.ops import demo

    notebooks = tmp_path / "notebooks"
    for stage, parameters in _DEMO_PARAMETERS.items():
        if stage == failing:
            work = f"raise RuntimeError('{stage} broke')"
        elif stage == "20_build_dataset" and failing == "30_train_candidate":
            work = _ELIGIBLE_DATASET
        else:
            work = "print('ok')"
        write_stage_notebook(notebooks / f"{stage}.ipynb", parameters, work)
    _env(tmp_path, tiny_model_dir, monkeypatch)
    monkeypatch.setenv("OPS_NOTEBOOKS_DIR", str(notebooks))
    monkeypatch.setattr(demo, "build_demo_corpus", lambda name: dataclasses.replace(mini_corpus_spec(), name=name))
    code = main(["demo", "--requests", "10"])
    out = capsys.readouterr().out
    assert code == (0 if failing is None else 1)
    assert ("Demo finished with a failed step (exit 1)" in out) is (failing is not None)
    # Every step ran (a failed 10 does not stop the demo); the failing one is recorded FAILED.
    ran = ["10_feedback_health", "20_build_dataset"] + (
        ["30_train_candidate"] if failing == "30_train_candidate" else []
    )
    assert _executions(tmp_path) == [(stage, "FAILED" if stage == failing else "SUCCEEDED") for stage in ran]
    if failing == "30_train_candidate":
        assert "run 1: FAILED — TRAINING ERROR: 30_train_candidate failed at cell 2: RuntimeError" in out
        # The worker's stage ran in a kernel, out of the console's sight: the watcher reported it.
        assert "▸ 30_train_candidate of run 1 FAILED after" in out
    else:
        assert "no eligible dataset: nothing to train" in out


def test_register_eval_guard_registers_a_guard_set_with_its_corpus(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from opslib.infra.workspace import open_workspace
    from opslib.lifecycle.evaluation.guard import guard_set
    from opslib.lifecycle.evaluation.sets import corpus_key

    _env(tmp_path, tiny_model_dir, monkeypatch)
    assert main(["init", "--quiet"]) == 0
    capsys.readouterr()
    folder = write_beir(tmp_path / "general", n_queries=40)
    assert main(["register-eval", "--guard", str(folder), "--name", "general"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("guard set eval-") and "general" in out
    ws = open_workspace()
    ref = guard_set(ws, register_builtin=False)
    assert ref is not None and ref in out and ws.objects.exists(corpus_key(ref))
    assert main(["register-eval", "--guard", str(folder), "--corpus", "x"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_export_builtin_writes_a_benchmark_folder_and_never_overwrites_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from opslib.corpus.beir import read_beir
    from opslib.corpus.builtin import build_demo_corpus

    folder = tmp_path / "bench-data" / "stdlib"
    assert main(["export-builtin", str(folder)]) == 0
    out = capsys.readouterr().out
    spec = build_demo_corpus()
    assert f"wrote {len(spec.documents)} passages, {len(spec.queries)} queries" in out
    assert f"opsbench import-beir {folder} --name stdlib" in out
    back = read_beir(folder, "stdlib")
    assert {d.doc_id for d in back.documents} == {d.doc_id for d in spec.documents}
    assert main(["export-builtin", str(folder)]) == 2
    assert "already holds corpus.jsonl" in capsys.readouterr().err
