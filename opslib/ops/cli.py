"""``opsbench`` — the command line of the Biblio Ops Workbench."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DatabaseError

from opslib.control.runs import get_run
from opslib.corpus.beir import export_beir, read_beir
from opslib.corpus.builtin import build_demo_corpus
from opslib.corpus.chunking import model_budget, rechunk
from opslib.corpus.loader import CorpusSpec, default_corpus_name, imported_corpora_text, load_corpus
from opslib.db.migrate import current_revision, require_current, require_existing, upgrade
from opslib.errors import Conflict, Invalid, NotFound, OpsError, Refused
from opslib.execution.run_index import build_run_index
from opslib.execution.runner import run_stage
from opslib.execution.schedule import describe, run_due, run_forever
from opslib.execution.worker import Worker
from opslib.infra.logs import configure_logging, get_logger
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import (
    records_from_corpus,
    records_from_file,
    register_evaluation_set,
)
from opslib.lifecycle.feedback.events import IntakeLimits, ingest_feedback
from opslib.lifecycle.feedback.simulate import simulate_traffic
from opslib.ops import actions
from opslib.ops.actions import ActionRefused
from opslib.ops.alerts import problems
from opslib.ops.bootstrap import init_workspace
from opslib.ops.demo import run_demo
from opslib.ops.monitor import store_failure, workspace_status
from opslib.settings import Settings

log = get_logger(__name__)

# Exit codes: the CLI decides by an error's marker class (opslib.errors), most specific first.
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_REFUSED, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4, 5
_MARKER_EXITS: tuple[tuple[type[OpsError], int], ...] = (
    (Conflict, EXIT_CONFLICT),
    (NotFound, EXIT_NOT_FOUND),
    (Refused, EXIT_REFUSED),
    (Invalid, EXIT_INVALID),
)
EXIT_CODES_HELP = """exit codes:
  0  done
  1  failed: a stage, tick or the demo failed, or an operation failed (an error without a marker);
     `status --check`: it found a problem
  2  invalid: usage, bad input or settings (Invalid), or the workspace is not ready
  3  refused: a guard said no (Refused), also inside a stage notebook; nothing was changed
  4  not found: what you named does not exist (NotFound)
  5  conflict: lost a race or something changed meanwhile (Conflict); look again, then retry"""


def exit_code(exc: OpsError) -> int:
    """The exit code of an opslib error: by its marker, most specific first; else 1 (failed)."""
    for marker, code in _MARKER_EXITS:
        if isinstance(exc, marker):
            return code
    return EXIT_FAILED


class CliError(Invalid):
    """A usage error of the command line (exit 2, like argparse's)."""


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it parses (7, 0.5, true, "x"), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CliError(f"parameter {text!r}: expected key=value")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _workspace(
    args: argparse.Namespace, default_log_name: str | None = None, settings_from_options: dict[str, Any] | None = None
) -> Workspace:
    """Settings and logging for a command; ``default_log_name``: log to
    ``<workspace>/logs/<name>`` unless OPS_LOG_FILE says where. ``settings_from_options``: the
    command's options that override settings (None values: not given), checked like the settings."""
    overrides: dict[str, Any] = {k: v for k, v in (settings_from_options or {}).items() if v is not None}
    if args.config:
        overrides["config_file"] = args.config
    if args.workspace:
        overrides["workspace"] = args.workspace
    settings = Settings(**overrides)
    if default_log_name is not None and settings.log_file is None:
        settings = settings.model_copy(update={"log_file": settings.workspace / "logs" / default_log_name})
    # With a log file, the JSON lines go there and only warnings and errors reach the terminal.
    configure_logging(
        settings.log_level, path=settings.log_file, console_level="WARNING" if settings.log_file is not None else None
    )
    return Workspace(settings)


def _ready(ws: Workspace) -> Workspace:
    """The workspace, once its Metadata DB exists at the code's schema; else refused with the hint
    (``schema_hint``) before anything is created: a missing SQLite file is not made by asking."""
    require_existing(ws.settings.resolved_db_url)
    require_current(ws.db)
    return ws


def cmd_init(args: argparse.Namespace) -> int:
    report = init_workspace(_workspace(args), progress=not args.quiet)
    state = "bootstrapped" if report.created else "already initialised"
    print(f"workspace {state}: serving {report.model_version} on index {report.index_name}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    if args.db_command == "upgrade":
        print(f"Metadata DB at revision {upgrade(ws.db, args.revision)}")
    else:
        require_existing(ws.settings.resolved_db_url)  # read-only: never creates the file
        print(current_revision(ws.db) or "empty (no schema yet)")
    return 0


def _beir_name(args: argparse.Namespace, folder: Path) -> str:
    """``--name``, else a name derived from the folder's that satisfies the name rule (said so)."""
    if args.name:
        return str(args.name)
    name = default_corpus_name(folder.resolve().name)
    print(f"corpus name: {name} (from the folder {folder.resolve().name!r}; --name chooses another)")
    return name


SERVING = "serving"


def _chunked(ws: Workspace, args: argparse.Namespace, spec: CorpusSpec) -> CorpusSpec:
    """``spec`` re-chunked to a model's token budget when ``--chunk-to-model`` or
    ``--chunk-tokens`` asks for it (said so), else as it is: one chunk per passage."""
    if args.chunk_to_model is None and args.chunk_tokens is None:
        return spec
    version = None if args.chunk_to_model in (None, SERVING) else str(args.chunk_to_model)
    budget = model_budget(
        ws, version, args.chunk_tokens, version_option="--chunk-to-model", tokens_option="--chunk-tokens"
    )
    chunked, report = rechunk(spec, budget)
    print(
        f"re-chunked to {report.max_tokens} tokens of {budget.model_version}: {report.cut} of {report.passages} "
        f"passages cut, {report.chunks} chunks (longest {report.longest} tokens); "
        f"chunking_version {report.chunking_version}"
    )
    return chunked


def cmd_import_beir(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    name = _beir_name(args, Path(args.path))
    report = load_corpus(
        ws,
        _chunked(ws, args, read_beir(Path(args.path), name)),
        reserve_fraction=args.reserve_fraction,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(
        f"imported {report.name}: {report.chunks} chunks, {report.videos} videos, {report.projects} projects, "
        f"{report.traffic_queries} traffic + {report.reserved_queries} reserved queries "
        f"({report.dropped_queries} without judged passages dropped)"
    )
    return 0


def cmd_import_builtin(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    spec = _chunked(ws, args, build_demo_corpus(args.name))
    report = load_corpus(ws, spec, seed=args.seed, progress=not args.quiet)
    print(
        f"imported {report.name}: {report.chunks} chunks, {report.traffic_queries} traffic + "
        f"{report.reserved_queries} reserved queries"
    )
    return 0


def cmd_export_builtin(args: argparse.Namespace) -> int:
    """The built-in corpus as a BEIR folder: a small real benchmark set for every ``--dataset``
    and for ``import-beir``, built here from this Python's docstrings (no workspace needed)."""
    folder = Path(args.path)
    export = export_beir(build_demo_corpus(), folder)
    print(
        f"wrote {export.documents} passages, {export.queries} queries and {export.judgments} relevance judgments "
        f"to {folder} (corpus.jsonl, queries.jsonl, qrels.tsv; Python {sys.version.split()[0]}'s docstrings)"
    )
    print(f"import it with `opsbench import-beir {folder} --name stdlib`, or pass it to a benchmark's --dataset")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    if not args.corpus:
        raise CliError(f"--corpus is required: {imported_corpora_text(ws)}")
    channel: Any = None
    if args.url:
        from opslib.service.client import EndpointChannel, EndpointClient

        channel = EndpointChannel(EndpointClient(args.url, args.token))
    report = simulate_traffic(
        ws,
        args.corpus,
        requests=args.requests,
        seed=args.seed,
        noise=args.noise,
        users=args.users,
        progress=not args.quiet,
        channel=channel,
    )
    where = (
        f"acknowledged by {args.url} (it writes raw_logs/ in batches)"
        if args.url
        else f"in {len(report.ingest.raw_files)} raw log file(s)"
    )
    print(
        f"{report.requests} requests: {report.likes} likes, {report.dislikes} dislikes, "
        f"hit rate {report.hit_rate:.1%}; {report.ingest.accepted} events {where}"
    )
    return 0


def cmd_ingest_feedback(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    batch = args.batch_size or ws.settings.feedback_batch_size
    limits = IntakeLimits.from_settings(ws.settings)
    if args.file == "-":
        report = ingest_feedback(ws.objects, sys.stdin.buffer, batch_size=batch, limits=limits)
    else:
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"file {path}: not found")
        with open(path, "rb") as handle:
            report = ingest_feedback(ws.objects, handle, batch_size=batch, limits=limits)
    print(
        f"{report.lines} lines: {report.accepted} accepted into {len(report.raw_files)} raw log file(s), "
        f"{report.rejected} rejected into {len(report.error_files)} error log file(s)"
    )
    for reason, count in sorted(report.reasons.items()):
        print(f"  rejected {count}: {reason}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    params = dict(parse_param(p) for p in args.param)
    if args.run_id is not None:
        get_run(ws.db, args.run_id)  # RunNotFound (exit 4) before anything starts
    result = run_stage(ws, args.stage, params, run_id=args.run_id, progress=not args.quiet)
    print(f"{result.stage} {result.status.value} (execution {result.execution_id})")
    print(f"  notebook: {result.output_ipynb}")
    print(f"  report:   {result.output_html}")
    if result.error:
        verb = "refused" if result.refused else "failed"  # decided by class (opslib.errors.Refused)
        print(f"  {verb} at cell {result.error['cell_index']}: {result.error['ename']}: {result.error['evalue']}")
        return EXIT_REFUSED if result.refused else EXIT_FAILED
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    worker = Worker(_ready(_workspace(args)), name=args.name)
    if not args.once:
        worker.run_forever(args.poll_interval)
        return 0
    report = worker.run_once()
    for message_id, what in report.messages:
        print(f"message {message_id}: {what}")
    for run_id, what in report.reconciled:
        print(f"reconciled run {run_id}: {what}")
    for run_id, status in report.runs.items():
        print(f"run {run_id}: {status}")
    for run_id, what in report.released.items():
        print(f"release of run {run_id}: {what}")
    for message_id, what in report.rollbacks:
        print(f"rollback message {message_id}: {what}")
    for index_name, shards in report.shards.items():
        print(f"candidate index {index_name}: encoded shards {shards}")
    for execution_id in report.abandoned_executions:
        print(f"stage execution {execution_id}: ABANDONED (its process died: no heartbeat for run_stall_after_s)")
    if not (
        report.messages
        or report.runs
        or report.reconciled
        or report.released
        or report.rollbacks
        or report.shards
        or report.abandoned_executions
    ):
        print("nothing to do")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    if not args.once:
        run_forever(ws, args.poll_interval)
        return 0
    report = run_due(ws)
    for execution_id in report.abandoned:
        print(f"stage execution {execution_id}: ABANDONED (its process died: no heartbeat for run_stall_after_s)")
    for result in report.results:
        print(describe(result, ws.settings.schedule_timezone))
    return 1 if report.failed else 0


def _guarded(ws: Workspace, args: argparse.Namespace, preview: actions.Preview, perform: Any) -> int:
    """A guarded action from the CLI: the role first (nobody answers only to be refused), then
    ``--reason``; show the preview, take the typed confirmation (``--confirm``, or asked for on a
    terminal), perform it; refusals are audited and exit with 3 (``exit_code``)."""
    try:
        actions.require_role(ws, preview, args.reason or "")
        if not (args.reason or "").strip():
            raise CliError("--reason is required: why (it goes into the audit log)")
        print(
            f"{preview.action.value}: "
            f"{preview.summary if preview.possible else 'not possible now: ' + str(preview.blocker)}"
        )
        confirm = args.confirm
        if confirm is None and preview.possible:
            if not sys.stdin.isatty():
                raise CliError(f"--confirm {preview.target} is required (the target you confirm)")
            confirm = input(f"type {preview.target} to confirm: ")
        result = perform(confirm or "", args.reason)
    except ActionRefused as refused:
        raise ActionRefused(f"{refused} (audited)") from None
    print(f"done: {result.result} (audit {result.audit_id}, trace {result.trace_id})")
    return 0


def cmd_request_training(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    return _guarded(
        ws,
        args,
        actions.preview_training(ws),
        lambda confirm, reason: actions.retrigger_training(ws, confirm=confirm, reason=reason),
    )


def cmd_request_rollback(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    return _guarded(
        ws,
        args,
        actions.preview_rollback(ws),
        lambda confirm, reason: actions.request_rollback(ws, confirm=confirm, reason=reason),
    )


def cmd_generate_dataset(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    days = args.source_window_days
    return _guarded(
        ws,
        args,
        actions.preview_dataset(ws, days),
        lambda confirm, reason: actions.generate_dataset(
            ws, confirm=confirm, reason=reason, source_window_days=days, progress=True
        ),
    )


def cmd_promote(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    return _guarded(
        ws,
        args,
        actions.preview_promote(ws, args.run_id),
        lambda confirm, reason: actions.promote_run(ws, args.run_id, confirm=confirm, reason=reason),
    )


def cmd_change_precision(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    return _guarded(
        ws,
        args,
        actions.preview_precision_change(ws, args.precision),
        lambda confirm, reason: actions.change_precision(ws, args.precision, confirm=confirm, reason=reason),
    )


def cmd_propose_model(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    return _guarded(
        ws,
        args,
        actions.preview_propose_model(ws, args.source, args.version),
        lambda confirm, reason: actions.propose_model(ws, args.source, args.version, confirm=confirm, reason=reason),
    )


def cmd_register_eval(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    if sum(bool(x) for x in (args.corpus, args.file, args.guard)) != 1:
        raise CliError("give exactly one of --corpus NAME, --file PATH or --guard BEIR_FOLDER")
    if args.guard:
        from opslib.corpus.beir import read_beir
        from opslib.lifecycle.evaluation.guard import register_guard_set

        folder = Path(args.guard)
        spec = read_beir(folder, _beir_name(args, folder))
        ref = register_guard_set(ws, spec, source=f"guard: BEIR folder {folder.resolve()} (reserved queries)")
        print(f"guard set {ref}: {spec.name}, reserved queries with their own passages (the newest guard set is used)")
        return 0
    if args.corpus:
        records, source = records_from_corpus(ws, args.corpus), f"corpus {args.corpus}: reserved queries"
    else:
        records, source = records_from_file(Path(args.file)), f"file {Path(args.file).resolve()}"
    registered = register_evaluation_set(ws, records, source=source)
    print(
        f"evaluation set {registered.evaluation_dataset_ref}: {registered.sample_count} queries ({registered.source})"
    )
    if registered.merged:
        print(f"  {registered.merged} duplicate query text(s) merged into one query each (expected results united)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"run index rebuilt: {build_run_index(_ready(_workspace(args)))}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    found = problems(ws)
    if args.check:  # for cron and monitoring: the problems only, and the exit code says whether any
        if args.json:
            print(json.dumps([p.as_dict() for p in found], indent=2))
        else:
            print("\n".join(p.line() for p in found) if found else "OK: no problems")
        return EXIT_FAILED if found else EXIT_OK
    status = workspace_status(ws)
    if args.json:
        print(json.dumps({"problems": [p.as_dict() for p in found], **status}, indent=2, default=str))
        return 0
    print(f"problems ({len(found)}):" if found else "problems: none")
    for problem in found:
        print(f"  {problem.line()}")
    release = status.get("release")
    print(f"workspace: {status['workspace']}  (schema {status['schema']['current']}, head {status['schema']['head']})")
    if release:
        print(
            f"release: {release['release_status']}  active {release['active_model_version']} "
            f"on {release['active_index_name']}  previous {release['previous_model_version']}"
        )
    corpus = status["corpus"]
    print(f"corpus: {corpus['chunks']} chunks; videos {corpus['videos_by_status']}; imports {corpus['imports']}")
    print("indexes (entries the Metadata DB lists / vectors the store holds):")
    for index in status["indexes"]:
        held = "—" if index["vectors"] is None else index["vectors"]
        flag = index["state"] + (f": {index['detail']}" if index["detail"] and index["state"] != "UNREADABLE" else "")
        role = f" ({index['role']})" if index["role"] else ""
        print(f"  {index['index_name']}{role}: {index['entries']} / {held}  {flag}")
    if status["vector_store"]["error"]:
        print(f"vector store UNREADABLE: {status['vector_store']['error']}")
    datasets = status["datasets"]
    print(f"datasets: latest eligible {datasets['latest_eligible'] or '— (none)'}")
    for dataset in datasets["unusable"]:
        print(f"  UNUSABLE {dataset['dataset_version']} (since {dataset['unusable_at']}): {dataset['reason']}")
    print(f"models: {[m['model_version'] for m in status['models']]}")
    print(f"queue: {status['queue']['unacked']} unacked message(s)")
    print(f"runs (newest {len(status['runs'])}):" if status["runs"] else "runs: none yet")
    for run in status["runs"]:
        failure = f" at {run['failed_stage']}" if run["failed_stage"] else ""
        print(f"  run {run['id']:>4} {run['outcome']:<10} ({run['status']}{failure}) created {run['created_at']}")
    for parked in status["queue"]["parked"]:
        print(f"  PARKED message {parked['id']} ({parked['type']}, {parked['attempt']} deliveries): {parked['reason']}")
    print(f"release driven by: {status['release_driver']}")
    if shards := status.get("reindex_shards"):
        print(
            f"candidate index {shards['index_name']}: {shards['done']}/{shards['total']} shards done "
            f"({shards['chunks_done']}/{shards['chunks']} chunks), {shards['held']} being encoded"
        )
    for tick in status["schedules"]:
        last = f"last {tick['last_due_at']} {tick['last_status']}" if tick["last_due_at"] else "never ran"
        print(
            f"schedule {tick['schedule']:<8} {tick['cron']!r} ({tick['timezone']}): next {tick['next_due_at']}; {last}"
        )
    for endpoint in status["endpoints"]:
        print(
            f"endpoint {endpoint['endpoint']} at {endpoint['address']}: {endpoint['state']}, ready {endpoint['ready']}, "
            f"serving {endpoint['serving']} ({endpoint['release row']})"
        )
    for e in status["stage_executions"]:
        shown = "STALLED" if e["stalled"] else e["status"]  # RUNNING, its process silent too long
        print(f"  stage {e['id']:>4} {e['stage']:<22} {shown:<9} {e['started_at']}  {e['output_html']}")
        if e["status"] == "ABANDONED" or e["stalled"]:
            why = (e["error"] or {}).get("evalue") or f"no heartbeat since {e['heartbeat_at'] or e['started_at']}"
            print(f"       {why}")
    return 0


def cmd_reindex_active(args: argparse.Namespace) -> int:
    ws = _ready(_workspace(args))
    return _guarded(
        ws,
        args,
        actions.preview_reindex_active(ws),
        lambda confirm, reason: actions.reindex_active(ws, confirm=confirm, reason=reason, progress=not args.quiet),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from opslib.service.server import serve  # deferred: FastAPI and uvicorn only for this command

    ws = _ready(_workspace(args, settings_from_options={"serve_processes": args.processes}))
    serve(
        ws,
        host=args.host,
        port=args.port,
        endpoint_id=args.endpoint_id,
        advertise=args.advertise,
        allow_anonymous=args.allow_anonymous,
        listen_fd=args.listen_fd,
    )
    return 0


def cmd_serve_token(args: argparse.Namespace) -> int:
    from opslib.service.auth import new_token

    token, entry = new_token(args.name, args.scopes or ["search", "feedback", "embeddings"])
    print(f"token (give it to the client once; it is not stored): {token}")
    print("add this entry to OPS_SERVE_TOKENS (a JSON list) or serve_tokens in the config file:")
    print(json.dumps(entry.model_dump()))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from opslib.service.metrics import batch_registry, write_textfile

    ws = _ready(_workspace(args))
    if args.textfile:
        write_textfile(ws, Path(args.textfile))
        print(f"batch metrics written to {args.textfile}")
    else:
        from prometheus_client import generate_latest

        sys.stdout.write(generate_latest(batch_registry(ws)).decode())
    return 0


def cmd_flush_feedback(args: argparse.Namespace) -> int:
    from opslib.lifecycle.feedback.intake import flush_outbox

    report = flush_outbox(_ready(_workspace(args)), force=True)
    print(f"flushed {report.flushed} acknowledged feedback events to {report.raw_files or 'nothing'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo's console shows its steps and progress bars; its JSON logs go to a file.
    ws = _workspace(args, default_log_name="demo.log")
    print(f"JSON logs (every line with its trace_id): {ws.settings.log_file}")
    report = run_demo(ws, requests=args.requests, rollback=args.rollback, serve=args.serve)
    print()
    # The exit code says it too, but an operator reads this line first.
    print("Demo finished." if report.ok else "Demo finished with a failed step (exit 1): see its report below.")
    print(f"  feedback-health report: {report.feedback_health.output_html}")
    print(f"  dataset report:         {report.build_dataset.output_html}")
    if report.dataset is not None:
        print(
            f"  dataset verdict:        {report.dataset.dataset_version} "
            f"{'eligible' if report.dataset.eligible else 'ineligible: ' + '; '.join(report.dataset.ineligible_reasons)}"
        )
    if report.evaluation is not None:
        print(f"  evaluation verdict:     {report.evaluation.overall_decision.value}")
        print(f"  evaluation report:      {report.evaluation_report}")
    if report.served_by:
        print(f"  search now served by:   {report.served_by}")
    print(f"  every report:           {report.feedback_health.output_html.parent.parent / 'index.html'}")
    print("  status: `.venv/bin/opsbench status`; the ops dashboard: `make lab` (run all cells)")
    return 0 if report.ok else 1


def _chunking_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--chunk-to-model",
        nargs="?",
        const=SERVING,
        metavar="VERSION",
        help="cut passages longer than a registered model version reads into pieces that fit (its max sequence "
        "length less special tokens, counted by its tokenizer); without VERSION: the serving model",
    )
    sub.add_argument(
        "--chunk-tokens",
        type=int,
        metavar="N",
        help="pieces of at most N tokens (at least 16, at most the model's budget); alone: of the serving model",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opsbench",
        description="Biblio Ops Workbench: ML lifecycle and ops",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (else OPS_* environment variables)")
    parser.add_argument("--workspace", type=Path, help="workspace folder (overrides OPS_WORKSPACE)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("init", cmd_init, "create the workspace: migrate the Metadata DB, bootstrap model, release and index")
    sub.add_argument("--quiet", action="store_true", help="no progress bars")

    sub = add("db", cmd_db, "Metadata DB schema (Alembic migrations)")
    db_commands = sub.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="migrate to a revision (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_commands.add_parser("current", help="print the current revision")

    sub = add("import-beir", cmd_import_beir, "load a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv)")
    sub.add_argument("path", help="the BEIR folder")
    sub.add_argument(
        "--name", help="corpus name (default: from the folder's name, prefixed beir- when too short; printed)"
    )
    sub.add_argument("--reserve-fraction", type=float, default=0.3, help="share of queries kept for evaluation")
    sub.add_argument("--seed", type=int, default=0, help="seed of the traffic/evaluation query split")
    _chunking_options(sub)
    sub.add_argument("--quiet", action="store_true", help="no progress bars")

    sub = add("import-builtin", cmd_import_builtin, "load the built-in corpus made from the stdlib's docstrings")
    sub.add_argument("--name", default="stdlib", help="corpus name")
    sub.add_argument("--seed", type=int, default=0, help="seed of the traffic/evaluation query split")
    _chunking_options(sub)
    sub.add_argument("--quiet", action="store_true", help="no progress bars")

    sub = add(
        "export-builtin",
        cmd_export_builtin,
        "write the built-in corpus as a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv) for benchmarks",
    )
    sub.add_argument("path", help="the folder to write (created; refused if it already holds a BEIR file)")

    sub = add("simulate-traffic", cmd_simulate, "send simulated searches and ingest their feedback")
    sub.add_argument("--corpus", help="an imported corpus name (required; without it, the imported ones are listed)")
    sub.add_argument("--requests", type=int, default=200, help="number of search requests")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--noise", type=float, default=0.1, help="probability a rating is flipped")
    sub.add_argument("--users", type=int, default=25, help="number of simulated users")
    sub.add_argument("--url", help="send the traffic over HTTP to a running endpoint (`opsbench serve`)")
    sub.add_argument("--token", help="with --url: a bearer token with the search and feedback scopes")
    sub.add_argument("--quiet", action="store_true", help="no progress bars")

    sub = add("ingest-feedback", cmd_ingest_feedback, "validate feedback events (JSONL) into raw_logs/ and error_logs/")
    sub.add_argument("file", help="a JSONL file, or - for standard input")
    sub.add_argument("--batch-size", type=int, help="lines per raw log file (default: settings)")

    sub = add("run", cmd_run, "execute a stage notebook with Papermill and archive it in runs/")
    sub.add_argument("stage", help="stage name, e.g. 10_feedback_health")
    sub.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a stage parameter (repeatable); values are read as JSON when they parse",
    )
    sub.add_argument("--run-id", type=int, help="the MLPipelineRun this execution belongs to")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")

    sub = add(
        "worker",
        cmd_worker,
        "the ML Lifecycle Worker: TRAINING_REQUEST → run → 30_train → 40_evaluate "
        "(→ 50_reindex → 60_cutover on PASS); ROLLBACK_REQUEST → 70_rollback",
    )
    sub.add_argument("--once", action="store_true", help="one pass (reconcile, drain the queue, drive runs), then exit")
    sub.add_argument("--poll-interval", type=float, default=5.0, help="seconds between passes when idle")
    sub.add_argument("--name", help="worker name recorded on claimed messages")

    sub = add(
        "schedule",
        cmd_schedule,
        "run what is due per the cron schedules in settings "
        "(20_build_dataset daily, TRAINING_REQUEST weekly); each tick runs once",
    )
    sub.add_argument(
        "--once", action="store_true", help="run the due ticks, then exit (for cron / a Kubernetes CronJob)"
    )
    sub.add_argument("--poll-interval", type=float, default=60.0, help="seconds between checks without --once")

    guarded = (
        "Guarded (admin role; audited): shows what will happen, then needs --reason and the typed "
        "confirmation --confirm TARGET (asked for on a terminal)."
    )
    sub = add(
        "request-training",
        cmd_request_training,
        "queue a TRAINING_REQUEST (the worker picks the dataset). "
        + guarded
        + " TARGET: the latest eligible dataset version.",
    )
    sub.add_argument("--reason", help="required: why (goes into the audit log and the message)")
    sub.add_argument("--confirm", metavar="DATASET_VERSION", help="the dataset version the preview names")

    sub = add(
        "request-rollback",
        cmd_request_rollback,
        "queue a ROLLBACK_REQUEST back to the rollback snapshot. "
        + guarded
        + " TARGET: the model version serving now (a stale request is refused).",
    )
    sub.add_argument("--reason", help="required: why (goes into the audit log and the message)")
    sub.add_argument(
        "--confirm",
        "--expected-active",
        dest="confirm",
        metavar="MODEL_VERSION",
        help="the model version you see serving now",
    )

    sub = add(
        "generate-dataset",
        cmd_generate_dataset,
        "build a training dataset now (20_build_dataset over the "
        "last N days; never starts training). " + guarded + " TARGET: today's date (UTC), e.g. 2026-12-01.",
    )
    sub.add_argument("--reason", help="required: why (goes into the audit log)")
    sub.add_argument("--confirm", metavar="DATE", help="today's date (UTC) as the preview names it")
    sub.add_argument("--source-window-days", type=int, default=None, help="default: settings (30)")

    sub = add(
        "promote",
        cmd_promote,
        "approve the release of a READY_FOR_RELEASE run when auto_cutover is off "
        "(the worker then runs 50 reindex, 60 cutover). " + guarded + " TARGET: the run's candidate model version.",
    )
    sub.add_argument("run_id", type=int)
    sub.add_argument("--reason", help="required: why (goes into the audit log)")
    sub.add_argument("--confirm", metavar="MODEL_VERSION", help="the run's candidate model version")

    sub = add(
        "change-precision",
        cmd_change_precision,
        "serve the active model's weights at another precision: registers them as a new version recorded at "
        "PRECISION and queues a run naming it (no training; evaluated against the serving model, then "
        "50 reindex, 60 cutover on a PASS). " + guarded + " TARGET: the new version's name.",
    )
    sub.add_argument("precision", choices=["fp32", "bf16", "fp16"])
    sub.add_argument("--reason", help="required: why (goes into the audit log and the message)")
    sub.add_argument("--confirm", metavar="MODEL_VERSION", help="the new version's name, as the preview shows it")

    sub = add(
        "propose-model",
        cmd_propose_model,
        "bring your own model: validate the sentence-transformers folder at SOURCE (a path or any fsspec URL; it "
        "must load offline and smoke-encode), register it as VERSION with its source, you and your reason, and "
        "queue a run naming it (no training; evaluated against the serving model on the evaluation and guard "
        "sets, then 50 reindex, 60 cutover on a PASS). " + guarded + " TARGET: VERSION.",
    )
    sub.add_argument("source", help="a sentence-transformers folder, or an fsspec URL of one (s3://…, file://…)")
    sub.add_argument("--version", required=True, help="the model version to register it as (3-56 of a-z0-9._-)")
    sub.add_argument("--reason", help="required: why (goes into the audit log, the model's provenance, the message)")
    sub.add_argument("--confirm", metavar="MODEL_VERSION", help="the version, as the preview shows it")

    sub = add(
        "reindex-active",
        cmd_reindex_active,
        "rebuild the active index from the Metadata DB (its READY chunks, the active model): after a dropped "
        "collection or a damaged vector store (an embedded store's folder is moved aside first, never deleted). "
        + guarded
        + " TARGET: the active index name.",
    )
    sub.add_argument("--reason", help="required: why (goes into the audit log)")
    sub.add_argument("--confirm", metavar="INDEX_NAME", help="the active index name, as the preview shows it")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")

    sub = add("register-eval", cmd_register_eval, "register an immutable evaluation set (disjoint from traffic)")
    sub.add_argument("--corpus", help="an imported corpus: use its reserved queries")
    sub.add_argument("--file", help="a JSONL or CSV file with query_text, project_id, expected_results")
    sub.add_argument(
        "--guard", help="a BEIR folder registered as the guard set (its reserved 30 %% of queries, its own passages)"
    )
    sub.add_argument(
        "--name", help="with --guard: the corpus name ids are built from (default: from the folder's name; printed)"
    )

    add(
        "report",
        cmd_report,
        "rebuild runs/index.html (the run index for reviewers) and the history pages under runs/history/",
    )

    sub = add(
        "status",
        cmd_status,
        "summarise the workspace from the Metadata DB, what needs an operator first (docs/operator-guide.md#alerts)",
    )
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_argument(
        "--check",
        action="store_true",
        help="only the problems, one line each, and exit 1 if there is any (0 and 'OK: no problems' if none): "
        "for cron and monitoring",
    )

    sub = add(
        "serve",
        cmd_serve,
        "the managed embedding endpoint over HTTP: /v1/search, /v1/feedback, /v1/embeddings, /healthz, /readyz, "
        "/metrics (each process a replica; docs/serving.md)",
    )
    sub.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    sub.add_argument("--port", type=int, default=8000, help="0: any free port (printed on start)")
    sub.add_argument("--endpoint-id", help="the replica's id in serving_endpoints (default HOSTNAME:PORT)")
    sub.add_argument("--advertise", help="the URL other hosts reach this replica at (default http://HOST:PORT)")
    sub.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="no bearer token needed (loopback hosts only: for a local demo or a test)",
    )
    sub.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="worker processes serving this address, each a replica with its own endpoint row (ID/0, ID/1, …), "
        "restarted if one dies; recommended: the number of cores (default OPS_SERVE_PROCESSES, 1)",
    )
    # Internal: how the supervisor of --processes N starts each worker on its listening socket.
    sub.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)

    sub = add("serve-token", cmd_serve_token, "make a bearer token for the endpoint; prints it and its settings entry")
    sub.add_argument("name", help="who the token is for, e.g. biblio-app")
    sub.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=["search", "feedback", "embeddings"],
        help="repeatable (default: all three)",
    )

    sub = add(
        "metrics",
        cmd_metrics,
        "the lifecycle's batch metrics in Prometheus text format (to stdout, or --textfile for node_exporter)",
    )
    sub.add_argument("--textfile", help="write atomically to this file (node_exporter textfile collector)")

    add("flush-feedback", cmd_flush_feedback, "write feedback the endpoint acknowledged to raw_logs/ now")

    sub = add(
        "demo",
        cmd_demo,
        "init + built-in corpus + traffic + 10, 20 + a training run via the worker "
        "(30, 40, and on PASS 50, 60) + a search on the new model",
    )
    sub.add_argument("--requests", type=int, default=300, help="simulated search requests")
    sub.add_argument("--rollback", action="store_true", help="after a cutover, also demonstrate a rollback (70)")
    sub.add_argument(
        "--no-serve",
        dest="serve",
        action="store_false",
        help="no HTTP endpoint: traffic and searches in this process (default: an endpoint on a free loopback port)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ValidationError as exc:
        error = exc.errors()[0]
        what = "settings" if exc.title == "Settings" else exc.title
        print(f"error: {what}: {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
    except OpsError as exc:  # ours: each names its cause; its marker decides the exit code
        code = exit_code(exc)
        print(f"{'refused' if code == EXIT_REFUSED else 'error'}: {exc}", file=sys.stderr)
        return code
    except (ValueError, LookupError, RuntimeError, OSError) as exc:  # e.g. the DB is not migrated
        print(f"error: {exc}", file=sys.stderr)
    except DatabaseError as exc:  # a damaged Metadata DB: one paragraph that says what to do
        paragraph = store_failure(exc, _db_url(args))
        if paragraph is None:
            raise
        print(f"error: {paragraph}", file=sys.stderr)
        return EXIT_FAILED
    # Anything else is a bug: it propagates with its traceback.
    return EXIT_INVALID


def _db_url(args: argparse.Namespace) -> str | None:
    """The Metadata DB URL the command used (password hidden), for an error message."""
    try:
        overrides: dict[str, Any] = {"config_file": args.config} if args.config else {}
        if args.workspace:
            overrides["workspace"] = args.workspace
        from sqlalchemy import make_url

        return make_url(Settings(**overrides).resolved_db_url).render_as_string(hide_password=True)
    except Exception:  # only for the message: without it the paragraph still says what to do
        return None


if __name__ == "__main__":
    sys.exit(main())
