import io
import json
import logging

from opslib.logs import configure_logging, get_logger, trace


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
    assert [l["message"] for l in lines] == ["inside", "failed", "outside"]
    assert lines[0]["trace_id"] == lines[1]["trace_id"] == "trace-abc"
    assert lines[0]["run_id"] == 7 and "ValueError: bad" in lines[1]["exception"]
    assert lines[2]["trace_id"] and lines[2]["trace_id"] != "trace-abc"
    assert all({"ts", "level", "logger", "trace_id", "message"} <= set(l) for l in lines)
    logging.getLogger("other.library").warning("third-party")
    logging.getLogger("other.library").info("too chatty")
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert (last["message"], last["logger"]) == ("third-party", "other.library") and last["trace_id"]
    for handler in [h for h in logging.getLogger().handlers if getattr(h, "_opslib_json", False)]:
        logging.getLogger().removeHandler(handler)


def test_trace_ids_flow_from_messages_into_stage_records(ws) -> None:  # type: ignore[no-untyped-def]
    from opslib.messages import new_training_request
    from opslib.queue import publish, receive

    publish(ws.db, new_training_request(trace_id="from-the-scheduler"))
    delivery, message = receive(ws.db, "w", visibility_timeout_s=5)
    assert delivery.trace_id == message.trace_id == "from-the-scheduler"
