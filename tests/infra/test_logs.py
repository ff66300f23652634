import io
import json
import logging

from opslib.infra.logs import configure_logging, get_logger, trace


def test_every_line_is_json_with_a_trace_id() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    log = get_logger("test")
    with trace("trace-abc"):
        log.info("inside", extra={"run_id": 7})
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    log.warning("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["inside", "failed", "outside"]
    assert lines[0]["trace_id"] == lines[1]["trace_id"] == "trace-abc"
    assert lines[0]["run_id"] == 7 and "ValueError: bad" in lines[1]["exception"]
    assert lines[2]["trace_id"] and lines[2]["trace_id"] != "trace-abc"
    assert all({"ts", "level", "logger", "trace_id", "message"} <= set(line) for line in lines)
    logging.getLogger("other.library").warning("third-party")
    logging.getLogger("other.library").info("too chatty")
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert (last["message"], last["logger"]) == ("third-party", "other.library") and last["trace_id"]
    for handler in [h for h in logging.getLogger().handlers if getattr(h, "_opslib_json", False)]:
        logging.getLogger().removeHandler(handler)


def test_trace_ids_flow_from_messages_into_stage_records(ws) -> None:  # type: ignore[no-untyped-def]
    from opslib.control.messages import new_training_request
    from opslib.control.queue import publish, receive

    publish(ws.db, new_training_request(trace_id="from-the-scheduler"))
    delivery, message = receive(ws.db, "w", visibility_timeout_s=5)
    assert delivery.trace_id == message.trace_id == "from-the-scheduler"


def _drop_json_handlers() -> None:
    for handler in [h for h in logging.getLogger().handlers if getattr(h, "_opslib_json", False)]:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_a_log_file_takes_every_line_and_the_console_keeps_warnings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    console = io.StringIO()
    path = tmp_path / "logs" / "demo.log"  # its folder does not exist yet
    configure_logging("INFO", stream=console, path=path, console_level="WARNING")
    log = get_logger("test")
    with trace("trace-file"):
        log.info("step done")
        log.warning("look at this")
    _drop_json_handlers()
    in_file = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["message"] for line in in_file] == ["step done", "look at this"]
    assert {line["trace_id"] for line in in_file} == {"trace-file"}
    assert [json.loads(line)["message"] for line in console.getvalue().splitlines()] == ["look at this"]

    quiet = io.StringIO()  # a kernel: the file only, nothing on the stream
    configure_logging("INFO", stream=quiet, path=path)
    log.warning("kernel warning")
    _drop_json_handlers()
    assert quiet.getvalue() == "" and "kernel warning" in path.read_text()


def test_the_cli_honours_ops_log_file_and_the_demo_defaults_one(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from opslib.ops.cli import _workspace

    args = argparse.Namespace(config=None, workspace=tmp_path / "ws")
    monkeypatch.setenv("OPS_LOG_LEVEL", "INFO")
    log = get_logger("cli-test")
    try:
        ws = _workspace(args, default_log_name="demo.log")  # as `opsbench demo` does
        assert ws.settings.log_file == tmp_path / "ws" / "logs" / "demo.log"
        log.info("demo step")
        monkeypatch.setenv("OPS_LOG_FILE", str(tmp_path / "chosen.log"))
        assert _workspace(args, default_log_name="demo.log").settings.log_file == tmp_path / "chosen.log"
        log.info("to the chosen file")
        monkeypatch.delenv("OPS_LOG_FILE")
        assert _workspace(args).settings.log_file is None  # any other command: stderr
        log.info("on stderr")
    finally:
        _drop_json_handlers()
    assert "demo step" in (tmp_path / "ws" / "logs" / "demo.log").read_text()
    assert "to the chosen file" in (tmp_path / "chosen.log").read_text()
    err = capsys.readouterr().err
    assert "on stderr" in err and "demo step" not in err and "to the chosen file" not in err
